# %% [markdown]
# # 2. Histology (H&E): colour deconvolution, tiles, stitched back
#
# Bright-field H&E images need their own preprocessing: colour deconvolution
# separates the haematoxylin stain (nuclei) from eosin; contrast equalisation
# (CLAHE) and smoothing are compared as pipelines. Large slides are cut into
# overlapping tiles by the tiler, each tile is segmented, and the label tiles
# are stitched back without seams (an object cut by a tile border keeps one id).
#
# Data: a 512 x 512 H&E cryosection tile of CryoNuSeg (`../shared/data/imagej_roi`)
# with the pathologist's hand-drawn nucleus outlines (an ImageJ ROI zip), used
# here as ground truth. Model: the project's StarDist starter (trained on grey
# fluorescence and bright-field images), fed the haematoxylin channel.

# %%
# %matplotlib inline
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display
from matplotlib.patches import Rectangle

from opsef_orchestrator.config import RunConfig
from opsef_orchestrator.engine import run
from opsef_orchestrator.evaluation import evaluate_pair
from opsef_orchestrator.imagej import roi_zip_to_labels
from opsef_orchestrator.io import read_image, write_image
from opsef_orchestrator.manager import ServiceManager
from opsef_orchestrator.overlays import outline_overlay, to_uint8
from opsef_orchestrator.pipelines import Pipeline
from opsef_orchestrator.reshape import color_deconvolution, rgb_to_grey
from opsef_orchestrator.paths import shared_data_dir
from opsef_orchestrator.tiling import stitch_labels, tile_grid

DATA = shared_data_dir()
assert DATA is not None, "needs ../shared/data (or $OPSEF_SHARED_DATA): see the user guide"
OUT = Path(os.environ.get("OPSEF_NOTEBOOK_OUTPUT", "outputs")).resolve() / "02_histology"
OUT.mkdir(parents=True, exist_ok=True)
manager = ServiceManager()

case = DATA / "imagej_roi" / "TCGA-S4-A8RO"
image = read_image(next(case.glob("*.tif")))
truth = roi_zip_to_labels(case / "RoiSet.zip", image.shape[:2])
n_truth = len(np.unique(truth)) - 1
print(image.shape, image.axes, image.dtype, "pixel size (um):", image.pixel_size[-1], "| manual nuclei:", n_truth)

# %% [markdown]
# ## Colour deconvolution
# Ruifrok & Johnston's H-E-DAB matrix: each stain becomes one channel of
# optical density (high where the stain is dense). Haematoxylin marks nuclei.

# %%
stains = color_deconvolution(image.data, image.axes, stain="all")[0]
grey = rgb_to_grey(image.data, image.axes)[0]
fig, axes = plt.subplots(1, 4, figsize=(16, 4))
axes[0].imshow(image.data)
axes[0].set_title("H&E")
for ax, (i, name) in zip(axes[1:3], enumerate(["haematoxylin", "eosin"])):
    ax.imshow(to_uint8(stains[..., i]), cmap="gray")
    ax.set_title(name)
axes[3].imshow(to_uint8(grey), cmap="gray")
axes[3].set_title("grey (luminance)")
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Pipelines: haematoxylin alone, with CLAHE, with smoothing
# The same pipelines can be written in a run configuration's `pipelines:` list.

# %%
pipelines = [
    Pipeline.from_steps("haem", ("color_deconvolution", {"stain": "haematoxylin"})),
    Pipeline.from_steps("haem_clahe", ("color_deconvolution", {"stain": "haematoxylin"}),
                        ("clahe", {"tile_grid": 8, "clip_limit": 0.01})),
    Pipeline.from_steps("haem_smooth", ("color_deconvolution", {"stain": "haematoxylin"}), ("gaussian", {"sigma": 1.5})),
]
crop = (slice(0, 192), slice(0, 192))
fig, axes = plt.subplots(1, len(pipelines) + 1, figsize=(4 * (len(pipelines) + 1), 4))
axes[0].imshow(image.data[crop])
axes[0].set_title("input (crop)")
for ax, p in zip(axes[1:], pipelines):
    data, axes_out = p.apply(image.data, image.axes)
    ax.imshow(to_uint8(data[crop]), cmap="gray")
    ax.set_title(f"{p.name} ({axes_out}, {data.dtype})")
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# ## The tiler: overlapping tiles written as a tile set
# `tile_grid` gives each tile a read box (with overlap) and a core (the part it
# owns; the cores partition the image). The overlap must exceed the largest
# nucleus (here about 40 pixels).

# %%
tiles = tile_grid(image.shape[:2], tile_shape=256, overlap=64)
tile_dir = OUT / "tiles"
names = {}
for t in tiles:
    name = f"tile_y{t.index[0]}_x{t.index[1]}"
    write_image(tile_dir / f"{name}.tif", image.data[t.read], "YXC")
    names[t.index] = name
fig, ax = plt.subplots(figsize=(5, 5))
ax.imshow(image.data)
for t in tiles:
    (y, x) = t.read
    ax.add_patch(Rectangle((x.start, y.start), x.stop - x.start - 1, y.stop - y.start - 1, fill=False, ec="yellow", lw=1))
    (cy, cx) = t.core
    ax.add_patch(Rectangle((cx.start, cy.start), cx.stop - cx.start - 1, cy.stop - cy.start - 1, fill=False, ec="cyan", ls="--", lw=1))
ax.set_title(f"{len(tiles)} tiles (yellow: read box, cyan: core)")
ax.axis("off")
plt.show()

# %% [markdown]
# ## Segment the tile set: pipelines x scale factors
# The scale factor matches the nucleus size to what the model learnt (DSB
# nuclei); two are compared here.

# %%
cfg = RunConfig.model_validate({
    "name": "he_tiles",
    "inputs": [{"path": str(tile_dir), "include": ["tile_*.tif"]}],
    "pipelines": [p.model_dump(mode="json") for p in pipelines],
    "models": [{"model": "stardist:stardist_dsb2018_starter", "grid": {"scale": [1.0, 1.5]}}],
    "postprocess": {"measure": False},
    "outputs": {"root": str(OUT / "runs"), "report": False, "overlays": False},
})
result = run(cfg, manager=manager)
assert result.ok, result.failed
print(result.run_dir, result.record["counts"])

# %% [markdown]
# ## Stitch back and compare with the manual outlines
# The manual set is not exhaustive (few nuclei are outlined in the top part),
# so precision is underestimated; recall and the ranking are what matter here.

# %%
rows, stitched = [], {}
combinations = sorted({j["combination"] for j in result.record["jobs"]})
for combo in combinations:
    parts = ((t, read_image(result.run_dir / "labels" / combo / f"{names[t.index]}.tif").data) for t in tiles)
    labels = stitch_labels(parts, image.shape[:2])
    stitched[combo] = labels
    r = evaluate_pair(truth, labels, thresholds=(0.5,))["per_threshold"][0.5]
    rows.append({"combination": combo, "objects": int(labels.max()), "precision": r.precision, "recall": r.recall, "f1@0.5": r.f1})
scores = pd.DataFrame(rows).sort_values("f1@0.5", ascending=False, ignore_index=True)
display(scores.round(3))

# %%
best = scores["combination"][0]
fig, axes = plt.subplots(1, 2, figsize=(12, 6))
axes[0].imshow(outline_overlay(image.data, truth, colour=(0, 255, 0)))
axes[0].set_title(f"manual outlines ({n_truth})")
axes[1].imshow(outline_overlay(image.data, stitched[best], colour=(255, 255, 0)))
for t in tiles:
    (cy, cx) = t.core
    axes[1].add_patch(Rectangle((cx.start, cy.start), cx.stop - cx.start - 1, cy.stop - cy.start - 1, fill=False, ec="cyan", ls="--", lw=0.8))
axes[1].set_title(f"{best}\nstitched from {len(tiles)} tiles ({int(stitched[best].max())} objects)", fontsize=9)
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# ## The same, without writing tiles
# The run engine tiles internally any image larger than `tiling.tile_size`
# (and halves the tiles when a service runs out of memory). With the same tile
# size and overlap on the whole image, the result matches the stitched tile set.

# %%
pipe_name = best.split("__")[0]
params = {"scale": float(best.rsplit("scale", 1)[1])}
whole_cfg = RunConfig.model_validate({
    "name": "he_whole",
    "inputs": [{"path": str(next(case.glob("*.tif")))}],
    "pipelines": [p.model_dump(mode="json") for p in pipelines if p.name == pipe_name],
    "models": [{"model": "stardist:stardist_dsb2018_starter", "parameters": params}],
    "tiling": {"tile_size": 256, "overlap": 64},
    "postprocess": {"measure": False},
    "outputs": {"root": str(OUT / "runs"), "report": False},
})
whole = run(whole_cfg, manager=manager)
assert whole.ok, whole.failed
job = whole.record["jobs"][0]
labels = read_image(whole.run_dir / job["labels"]).data
r = evaluate_pair(truth, labels, thresholds=(0.5,))["per_threshold"][0.5]
agree = evaluate_pair(stitched[best], labels, thresholds=(0.5,))["per_threshold"][0.5]
print(f"engine tiling: {job['requests']} requests, {int(labels.max())} objects, F1@0.5 vs manual {r.f1:.3f}; "
      f"agreement with the stitched tile set F1 {agree.f1:.3f}")
