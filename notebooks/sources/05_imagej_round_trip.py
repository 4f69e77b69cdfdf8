# %% [markdown]
# # 5. ImageJ round trip: ROI sets for Fiji and AnnotatorJ, and back
#
# The analyst segments, exports the objects as ImageJ ROI zips (with the
# images, 16-bit label TIFFs and AnnotatorJ's import list); the biologist opens
# them in Fiji's ROI Manager or AnnotatorJ, corrects or draws outlines, and
# sends the ROI zip back; OpSeF reads it into labels and compares.
#
# Data: the two CryoNuSeg H&E tiles of `../shared/data/imagej_roi`, each with
# the `RoiSet.zip` of nucleus outlines drawn by hand in ImageJ (standing in for
# the biologist's returned ROI sets).

# %%
# %matplotlib inline
import os
import zipfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

from opsef_orchestrator.config import RunConfig
from opsef_orchestrator.engine import run
from opsef_orchestrator.evaluation import evaluate_pair
from opsef_orchestrator.imagej import export_for_imagej, labels_to_roi_zip, read_annotatorj_pairs, roi_zip_to_labels
from opsef_orchestrator.io import read_image
from opsef_orchestrator.manager import ServiceManager
from opsef_orchestrator.overlays import outline_overlay
from opsef_orchestrator.paths import shared_data_dir

DATA = shared_data_dir()
assert DATA is not None, "needs ../shared/data (or $OPSEF_SHARED_DATA): see the user guide"
OUT = Path(os.environ.get("OPSEF_NOTEBOOK_OUTPUT", "outputs")).resolve() / "05_imagej_round_trip"
OUT.mkdir(parents=True, exist_ok=True)
manager = ServiceManager()
cases = sorted(p for p in (DATA / "imagej_roi").iterdir() if p.is_dir())
print([c.name for c in cases])

# %% [markdown]
# ## Segment both tiles
# The histology pipeline of notebook 2 (haematoxylin channel) with the StarDist starter.

# %%
cfg = RunConfig.model_validate({
    "name": "cryonuseg",
    "inputs": [{"path": str(c), "include": ["*.tif"]} for c in cases],
    "pipelines": [{"name": "haem", "steps": [{"op": "color_deconvolution", "stain": "haematoxylin"}]}],
    "models": [{"model": "stardist:stardist_dsb2018_starter"}],
    "outputs": {"root": str(OUT / "runs"), "report": False},
})
result = run(cfg, manager=manager)
assert result.ok, result.failed
segmented = {}
for job in result.record["jobs"]:
    case = next(c for c in cases if job["stem"].startswith(c.name))
    segmented[case.name] = (read_image(job["image"]), read_image(result.run_dir / job["labels"]).data)
print({k: int(v[1].max()) for k, v in segmented.items()}, "objects")

# %% [markdown]
# ## Export for Fiji and AnnotatorJ
# One folder per batch: images, 16-bit label images, one ROI zip per image
# (Fiji: *Analyze > Tools > ROI Manager > More > Open*), and AnnotatorJ's
# file-pair list (*AnnotatorJ > Import OpSeF*). ROI names are the label ids.

# %%
export = OUT / "for_fiji"
written = export_for_imagej(export, [(name, img.data, lab, None) for name, (img, lab) in segmented.items()],
                            pixel_size=next(iter(segmented.values()))[0].pixel_size[-1])
for kind, paths in written.items():
    print(f"{kind:7s}", *[p.relative_to(export) for p in paths])
root, pairs = read_annotatorj_pairs(written["pairs"][0])
print("AnnotatorJ pairs:", pairs)
with zipfile.ZipFile(written["rois"][0]) as z:
    print(len(z.namelist()), "ROIs, first:", z.namelist()[:3])

# %% [markdown]
# ## The round trip is exact
# Rasterising the exported ROIs (ImageJ's rule: a pixel is inside when its
# centre is) gives back the label image, pixel for pixel, ids included.

# %%
fig, axes = plt.subplots(1, len(segmented), figsize=(6 * len(segmented), 6))
for ax, (name, (img, lab)) in zip(np.atleast_1d(axes), segmented.items()):
    back = roi_zip_to_labels(export / "rois" / f"{name}_RoiSet.zip", lab.shape)
    print(name, "identical after export and import:", bool(np.array_equal(back, lab)))
    assert np.array_equal(back, lab)
    ax.imshow(outline_overlay(img.data, back, colour=(255, 0, 255)))
    ax.set_title(f"{name}: {int(back.max())} ROIs re-imported", fontsize=9)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Re-import the manual ROI sets and compare
# The hand-drawn outlines come back as labels (59 and 116 nuclei: in the second
# set one ROI lies inside a later one and disappears, as in ImageJ). The first
# tile was outlined only in part, so both sets are compared inside the region
# the annotator covered (the bounding box of the manual ROIs).

# %%
rows = []
fig, axes = plt.subplots(1, len(cases), figsize=(7 * len(cases), 7))
for ax, case in zip(np.atleast_1d(axes), cases):
    img, lab = segmented[case.name]
    manual = roi_zip_to_labels(case / "RoiSet.zip", lab.shape)
    ys, xs = np.nonzero(manual)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    r = evaluate_pair(manual[box], lab[box], thresholds=(0.5,))["per_threshold"][0.5]
    rows.append({"tile": case.name, "manual": len(np.unique(manual)) - 1, "segmented (in box)": len(np.unique(lab[box])) - 1,
                 "precision": r.precision, "recall": r.recall, "f1@0.5": r.f1})
    both = outline_overlay(outline_overlay(img.data, manual, colour=(0, 255, 0)), lab, colour=(255, 0, 255))
    ax.imshow(both)
    ax.add_patch(plt.Rectangle((box[1].start, box[0].start), box[1].stop - box[1].start, box[0].stop - box[0].start,
                               fill=False, ec="cyan", ls="--"))
    ax.set_title(f"{case.name}: manual (green) vs OpSeF (magenta)", fontsize=9)
    ax.axis("off")
plt.show()
display(pd.DataFrame(rows).round(3))

# %% [markdown]
# ## Corrections come back the same way
# The biologist's corrected ROI zip replaces the segmentation: here the manual
# set of the second tile plays that role and is saved as the new label image
# and a clean ROI zip (renumbered ids) for the next round.

# %%
case = cases[-1]
corrected = roi_zip_to_labels(case / "RoiSet.zip", segmented[case.name][1].shape)
labels_to_roi_zip(corrected, OUT / f"{case.name}_corrected_RoiSet.zip")
written = export_for_imagej(OUT / "corrected", [(case.name, segmented[case.name][0].data, corrected, None)])
print(written["labels"][0].relative_to(OUT), len(np.unique(corrected)) - 1, "objects")
fig, axes = plt.subplots(1, 2, figsize=(12, 6))
axes[0].imshow(outline_overlay(segmented[case.name][0].data, segmented[case.name][1], colour=(255, 0, 255)))
axes[0].set_title("sent to the biologist")
axes[1].imshow(outline_overlay(segmented[case.name][0].data, corrected, colour=(0, 255, 0)))
axes[1].set_title("returned (corrected)")
for ax in axes:
    ax.axis("off")
plt.show()
