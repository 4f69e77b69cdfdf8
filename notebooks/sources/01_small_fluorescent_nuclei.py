# %% [markdown]
# # 1. Small fluorescent nuclei: find the best pipeline x model x scale, then run it
#
# The seed paper's DSB example: explore preprocessing pipelines x models x scale
# factors on a few images, look at the montage, pick the best combination by eye
# and by the evaluation leaderboard, run it over the whole split, measure and plot.
#
# Runs offline against the local model services (started automatically on first
# use, see `opsef-orchestrate services status`). Data: the 2018 Data Science Bowl
# validation split in `../shared/data/dsb2018/val` (or `$OPSEF_SHARED_DATA`).
# Outputs go to `notebooks/outputs/` (or `$OPSEF_NOTEBOOK_OUTPUT`).

# %%
# %matplotlib inline
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml
from IPython.display import display

from opsef_orchestrator.config import RunConfig
from opsef_orchestrator.engine import run
from opsef_orchestrator.envs import env_ready
from opsef_orchestrator.io import read_image
from opsef_orchestrator.manager import ServiceManager
from opsef_orchestrator.overlays import montage_figure, outline_overlay, to_uint8
from opsef_orchestrator.paths import services_root, shared_data_dir
from opsef_orchestrator.plots import scatter_plot

DATA = shared_data_dir()
assert DATA is not None, "needs ../shared/data (or $OPSEF_SHARED_DATA): see the user guide"
VAL = DATA / "dsb2018" / "val"
OUT = Path(os.environ.get("OPSEF_NOTEBOOK_OUTPUT", "outputs")).resolve() / "01_small_fluorescent_nuclei"
OUT.mkdir(parents=True, exist_ok=True)
manager = ServiceManager()  # local services; $OPSEF_STATE_DIR or <repo>/.opsef/state
print("data:", VAL, "| outputs:", OUT)

# %% [markdown]
# ## A few images to explore on
# Three fluorescence images of different kinds: few large nuclei, many small
# crowded nuclei, and a larger field.

# %%
index = json.loads((DATA / "dsb2018" / "index.json").read_text())
explore = ["0e132f71c8b4875c3c2dd7a22997468a3e842b46aa9bd47cf7b0e8b7d63f0925",
           "43a71aeb641faa18742cb826772a8566c6c947d7050f9ab15459de6cc2b3b6af",
           "1747f62148a919c8feb6d607faeebdf504b5e2ad42b6b1710b1189c37ebcdb2c"]
fig, axes = plt.subplots(1, len(explore), figsize=(4 * len(explore), 4))
for ax, stem in zip(axes, explore):
    img = read_image(VAL / "images" / f"{stem}.png")
    ax.imshow(to_uint8(img.data[..., :3]))
    ax.set_title(f"{stem[:8]} {img.shape[:2]}, {index[stem]['nuclei']} nuclei", fontsize=9)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Models
# The project's starter models, one per network family. StarDist is always
# used; the U-Net and Cellpose starters join when their model and service
# environment are installed here (`opsef-orchestrate services install`).
# The scale factor resizes the image before the network sees it (OpSeF's
# Cellpose/StarDist "scale"): small nuclei gain from scales above 1.

# %%
def installed(ref: str) -> bool:
    service, model = ref.split(":")
    folder = services_root() / service
    return (folder / "models" / model / "manifest.yaml").is_file() and env_ready(folder)


models = [{"model": "stardist:stardist_dsb2018_starter", "grid": {"scale": [0.75, 1.0, 1.5]}}]
if installed("cellpose:cellpose_dsb2018_starter"):
    models.append({"model": "cellpose:cellpose_dsb2018_starter", "grid": {"scale": [0.75, 1.0, 1.5]}})
if installed("unet:unet_dsb2018_starter"):
    models.append({"model": "unet:unet_dsb2018_starter"})
print([m["model"] for m in models])

# %% [markdown]
# ## Explore: pipelines x models x scale factors
# The run configuration is the same one `opsef-orchestrate run` reads from YAML.

# %%
explore_cfg = RunConfig.model_validate({
    "name": "explore",
    "inputs": [{"path": str(VAL / "images"), "include": [f"{s}.png" for s in explore]}],
    "ground_truth": {"path": str(VAL / "masks"), "pattern": "{stem}.tif"},
    "pipelines": [{"name": "none", "steps": []},
                  {"name": "median3", "steps": [{"op": "median", "size": 3}]}],
    "models": models,
    "outputs": {"root": str(OUT / "runs"), "report": False},
})
explored = run(explore_cfg, manager=manager)
print(explored.run_dir, explored.record["counts"])
assert explored.ok, explored.failed

# %% [markdown]
# ## The montage: pipelines as rows, model x parameters as columns
# (the run folder also holds one PNG per image in `montages/`).

# %%
def montage(run_dir: Path, stem: str):
    jobs = [j for j in explored.record["jobs"] if j["stem"] == stem]
    grid, notes = {}, {}
    for j in jobs:
        image = read_image(run_dir / "preprocessed" / j["pipeline"] / f"{stem}.tif").data
        labels = read_image(run_dir / j["labels"]).data
        column = j["combination"].split("__", 1)[1].replace("stardist_dsb2018_starter", "starter")
        grid[(j["pipeline"], column)] = outline_overlay(image, labels)
        notes[(j["pipeline"], column)] = f"{int(labels.max())} objects"
    return montage_figure(grid, rows=[p.name for p in explore_cfg.pipelines], title=stem[:12], notes=notes, tile_inches=2.4)


display(montage(explored.run_dir, explore[1]))

# %% [markdown]
# ## The leaderboard
# Micro-averaged over the images; ranked by mean average precision over IoU
# thresholds 0.5..0.95 (`mAP`); `f1@0.5` is the F1 score at IoU 0.5.

# %%
board = explored.evaluation
cols = ["rank", "pipeline", "model", "parameters", "n_true", "n_pred", "precision", "recall", "f1@0.5", "mAP"]
display(board[cols].round(3))
fig, ax = plt.subplots(figsize=(7, 3))
ax.barh(board["combination"].str.replace("stardist_dsb2018_starter", "starter"), board["f1@0.5"])
ax.invert_yaxis()
ax.set_xlabel("F1 at IoU 0.5")
plt.show()

# %% [markdown]
# ## Run the best combination over the whole split
# By eye the montage agrees with the leaderboard's top row (check on your own
# images: the ranking is only as good as the ground truth). The chosen
# combination is written as a run configuration: the same run from the command
# line is `opsef-orchestrate run best.yaml`.

# %%
best = board.iloc[0]
pipeline = next(p for p in explore_cfg.pipelines if p.name == best["pipeline"])
final_cfg = RunConfig.model_validate({
    "name": "dsb_val_best",
    "inputs": [{"path": str(VAL / "images"), "include": ["*.png"]}],
    "ground_truth": {"path": str(VAL / "masks"), "pattern": "{stem}.tif"},
    "pipelines": [pipeline.model_dump(mode="json")],
    "models": [{"model": best["model"], "parameters": json.loads(best["parameters"])}],
    "postprocess": {"filters": {"area": [10, None]}},
    "outputs": {"root": str(OUT / "runs")},
})
(OUT / "best.yaml").write_text(yaml.safe_dump(final_cfg.model_dump(mode="json"), sort_keys=False))
final = run(final_cfg, manager=manager)
assert final.ok, final.failed
print(final.run_dir)
display(final.evaluation[cols].round(3))

# %% [markdown]
# ## Measure and plot
# Every object was measured (`tables/objects.csv`); objects below 10 pixels
# were removed by the filter (column `kept`, labels in `labels_filtered/`).

# %%
objects = pd.read_csv(final.run_dir / "tables" / "objects.csv")
kept = objects[objects["kept"]]
per_image = pd.read_csv(final.run_dir / "tables" / "evaluation.csv").query("thresh == 0.5")
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
axes[0].hist(np.log10(kept["area"]), bins=30)
axes[0].set_xlabel("log10 area (pixels)")
axes[0].set_ylabel("objects")
axes[1].scatter(per_image["n_true"], per_image["n_pred"])
lim = max(per_image["n_true"].max(), per_image["n_pred"].max()) * 1.05
axes[1].plot([0, lim], [0, lim], "k--", lw=1)
axes[1].set_xlabel("nuclei in the ground truth")
axes[1].set_ylabel("objects found")
plt.show()
display(scatter_plot(objects, "area", "circularity", color_by="kept", ranges={"area": [10, None]}, logx=True))
print(f"{len(kept)} objects kept of {len(objects)} in {objects['image'].nunique()} images")
