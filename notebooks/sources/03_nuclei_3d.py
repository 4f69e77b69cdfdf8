# %% [markdown]
# # 3. Nuclei in 3D: explore on 2D planes, then segment the volume
#
# The seed's two-stage strategy for volumes: choose preprocessing and
# parameters quickly on a few representative 2D planes (cheap, easy to judge by
# eye), then segment the whole volume in 3D with the chosen settings, and check
# the result on orthogonal slices.
#
# Data: a CHO cell volume of the Cell Tracking Challenge (Fluo-N3DH-CHO,
# `../shared/data/fluo3d`), 5 x 443 x 512 voxels, with the challenge's
# label volume. Those labels are an automatic segmentation, not manual ground
# truth: the scores below check plumbing and agreement, not accuracy.
#
# The 3D stage uses, in this order, whichever is installed here: the project's
# StarDist 3D starter model (`stardist:stardist_3d_starter`); Cellpose's
# starter with plane-by-plane masks stitched into 3D by overlap
# (`stitch_threshold`); or, as a fallback that needs only the StarDist 2D
# starter, every plane segmented in 2D and linked into 3D objects by overlap
# here in the notebook (the same idea as Cellpose's stitching).

# %%
# %matplotlib inline
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

from opsef_orchestrator.config import RunConfig
from opsef_orchestrator.engine import run
from opsef_orchestrator.envs import env_ready
from opsef_orchestrator.evaluation import evaluate_pair, match_pairs
from opsef_orchestrator.io import read_image, write_image, write_labels
from opsef_orchestrator.manager import ServiceManager
from opsef_orchestrator.measure import measure_objects
from opsef_orchestrator.overlays import outline_overlay, to_uint8
from opsef_orchestrator.paths import services_root, shared_data_dir

DATA = shared_data_dir()
assert DATA is not None, "needs ../shared/data (or $OPSEF_SHARED_DATA): see the user guide"
OUT = Path(os.environ.get("OPSEF_NOTEBOOK_OUTPUT", "outputs")).resolve() / "03_nuclei_3d"
OUT.mkdir(parents=True, exist_ok=True)
manager = ServiceManager()

volume_path = DATA / "fluo3d" / "cho_t00_img.tif"
volume = read_image(volume_path)
reference = read_image(DATA / "fluo3d" / "cho_t00_labels.tif").data
print(volume.shape, volume.axes, volume.dtype, "| reference objects:", len(np.unique(reference)) - 1)

# %%
nz = volume.shape[0]
fig, axes = plt.subplots(1, nz + 1, figsize=(3 * (nz + 1), 3))
axes[0].imshow(to_uint8(volume.data.max(axis=0)), cmap="gray")
axes[0].set_title("max projection")
for z in range(nz):
    axes[z + 1].imshow(to_uint8(volume.data[z]), cmap="gray")
    axes[z + 1].set_title(f"z = {z}")
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Stage 1: explore on representative planes
# The middle planes, written as 2D images (with the reference labels of the
# same planes), swept over pipelines x scale factors with the StarDist 2D
# starter. These nuclei are several times larger than the DSB nuclei the
# starter learnt from, so scale factors below 1 are tried.

# %%
planes = [nz // 2 - 1, nz // 2, nz // 2 + 1]
for z in planes:
    write_image(OUT / "planes" / "images" / f"cho_z{z}.tif", volume.data[z], "YX")
    write_labels(OUT / "planes" / "masks" / f"cho_z{z}.tif", reference[z])
explore_cfg = RunConfig.model_validate({
    "name": "cho_planes",
    "inputs": [{"path": str(OUT / "planes" / "images")}],
    "ground_truth": {"path": str(OUT / "planes" / "masks")},
    "pipelines": [{"name": "none", "steps": []},
                  {"name": "gauss2", "steps": [{"op": "gaussian", "sigma": 2}]}],
    "models": [{"model": "stardist:stardist_dsb2018_starter", "grid": {"scale": [0.25, 0.5, 1.0]}}],
    "postprocess": {"measure": False},
    "outputs": {"root": str(OUT / "runs"), "report": False},
})
explored = run(explore_cfg, manager=manager)
assert explored.ok, explored.failed
board = explored.evaluation
display(board[["rank", "pipeline", "parameters", "n_true", "n_pred", "precision", "recall", "f1@0.5", "mAP"]].round(3))

# %%
best = board.iloc[0]
z = planes[1]
grid = [j for j in explored.record["jobs"] if j["stem"] == f"cho_z{z}"]
grid.sort(key=lambda j: (j["pipeline"], j["params"]["scale"]))
fig, axes = plt.subplots(2, 3, figsize=(12, 7))
for ax, j in zip(axes.ravel(), grid):
    labels = read_image(explored.run_dir / j["labels"]).data
    ax.imshow(outline_overlay(volume.data[z], labels))
    ax.set_title(f"{j['pipeline']} scale {j['params']['scale']:g}: {int(labels.max())} objects", fontsize=9)
    ax.axis("off")
plt.show()
print("chosen on the planes:", best["combination"])

# %% [markdown]
# ## Stage 2: the whole volume in 3D

# %%
def installed(service: str, model: str) -> bool:
    folder = services_root() / service
    return (folder / "models" / model / "manifest.yaml").is_file() and env_ready(folder)


pipeline = next(p for p in explore_cfg.pipelines if p.name == best["pipeline"])
scale = json.loads(best["parameters"])["scale"]
if installed("stardist", "stardist_3d_starter"):
    strategy, model = "StarDist 3D", {"model": "stardist:stardist_3d_starter"}
elif installed("cellpose", "cellpose_dsb2018_starter"):
    strategy, model = "Cellpose, planes stitched by overlap", {
        "model": "cellpose:cellpose_dsb2018_starter", "parameters": {"scale": scale, "stitch_threshold": 0.3}}
else:
    strategy, model = "StarDist 2D per plane, linked here", None
print("3D strategy:", strategy)

if model is not None:
    cfg3d = RunConfig.model_validate({
        "name": "cho_3d",
        "inputs": [{"path": str(volume_path)}],
        "pipelines": [pipeline.model_dump(mode="json")],
        "models": [model],
        "outputs": {"root": str(OUT / "runs"), "report": False},
    })
    result = run(cfg3d, manager=manager)
    assert result.ok, result.failed
    labels3d = read_image(result.run_dir / result.record["jobs"][0]["labels"]).data
else:
    for z in range(nz):
        write_image(OUT / "all_planes" / f"cho_z{z}.tif", volume.data[z], "YX")
    cfg2d = RunConfig.model_validate({
        "name": "cho_all_planes",
        "inputs": [{"path": str(OUT / "all_planes")}],
        "pipelines": [pipeline.model_dump(mode="json")],
        "models": [{"model": "stardist:stardist_dsb2018_starter", "parameters": {"scale": scale}}],
        "postprocess": {"measure": False},
        "outputs": {"root": str(OUT / "runs"), "report": False},
    })
    result = run(cfg2d, manager=manager)
    assert result.ok, result.failed
    per_plane = [read_image(result.run_dir / "labels" / result.record["jobs"][0]["combination"] / f"cho_z{z}.tif").data
                 for z in range(nz)]
    # Link each plane's objects to the objects of the plane above by overlap (IoU >= 0.3).
    labels3d = np.zeros((nz,) + per_plane[0].shape, np.uint32)
    labels3d[0] = per_plane[0]
    next_id = int(per_plane[0].max()) + 1
    for z in range(1, nz):
        gt_ids, pred_ids, _ = match_pairs(labels3d[z - 1], per_plane[z], thresh=0.3)
        new = dict(zip(pred_ids.tolist(), gt_ids.tolist()))
        for obj in np.unique(per_plane[z])[1:].tolist():
            if obj not in new:
                new[obj] = next_id
                next_id += 1
        lut = np.zeros(int(per_plane[z].max()) + 1, np.uint32)
        for k, v in new.items():
            lut[k] = v
        labels3d[z] = lut[per_plane[z]]

scores = evaluate_pair(reference, labels3d, thresholds=(0.3, 0.5))["per_threshold"]
print(f"{len(np.unique(labels3d)) - 1} objects in 3D; agreement with the reference labels: "
      + ", ".join(f"F1@{t} {r.f1:.3f}" for t, r in scores.items()))

# %% [markdown]
# ## Orthogonal slices
# XY at the middle plane, XZ and YZ through the centre of the largest object;
# Z is stretched by the voxel anisotropy (about 5: 1 um planes, 0.2 um pixels).

# %%
table = measure_objects(labels3d, intensity=volume.data)
big = table.sort_values("volume", ascending=False).iloc[0]
cz, cy, cx = (int(round(big[c])) for c in ("centroid_z", "centroid_y", "centroid_x"))
views = {
    f"XY (z = {cz})": (volume.data[cz], labels3d[cz], 1.0),
    f"XZ (y = {cy})": (volume.data[:, cy, :], labels3d[:, cy, :], 5.0),
    f"YZ (x = {cx})": (volume.data[:, :, cx].T, labels3d[:, :, cx].T, 0.2),
}
fig, axes = plt.subplots(1, 3, figsize=(15, 4), gridspec_kw={"width_ratios": [4, 4, 1.5]})
for ax, (title, (img, lab, aspect)) in zip(axes, views.items()):
    ax.imshow(outline_overlay(img, lab), aspect=aspect, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
plt.show()
display(table[["label", "volume", "centroid_z", "centroid_y", "centroid_x", "equivalent_diameter", "sphericity", "mean_intensity"]].round(2))
