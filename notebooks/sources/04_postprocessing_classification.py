# %% [markdown]
# # 4. Postprocessing and classification
#
# After segmentation: measure every object, remove debris and merged objects
# with filters on area and circularity (chosen on a scatter plot), classify the
# objects by a mask (drawn by the user, or made automatically from an image),
# and look at the population with PCA and t-SNE.
#
# Data: two crowded fluorescence images of the DSB validation split, segmented
# with the StarDist starter through the run engine.

# %%
# %matplotlib inline
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display
from skimage.draw import polygon

from opsef_orchestrator.classify import add_classes, class_image, mask_from_channel
from opsef_orchestrator.config import RunConfig
from opsef_orchestrator.engine import run
from opsef_orchestrator.io import read_image
from opsef_orchestrator.manager import ServiceManager
from opsef_orchestrator.measure import measure_objects
from opsef_orchestrator.overlays import outline_overlay
from opsef_orchestrator.paths import shared_data_dir
from opsef_orchestrator.plots import embedding_plot, scatter_plot
from opsef_orchestrator.postprocess import filter_objects

DATA = shared_data_dir()
assert DATA is not None, "needs ../shared/data (or $OPSEF_SHARED_DATA): see the user guide"
VAL = DATA / "dsb2018" / "val"
OUT = Path(os.environ.get("OPSEF_NOTEBOOK_OUTPUT", "outputs")).resolve() / "04_postprocessing_classification"
OUT.mkdir(parents=True, exist_ok=True)
manager = ServiceManager()

stems = ["43a71aeb641faa18742cb826772a8566c6c947d7050f9ab15459de6cc2b3b6af",
         "52b267e20519174e3ce1e1994b5d677804b16bc670aa5f6ffb6344a0fdf63fde"]
cfg = RunConfig.model_validate({
    "name": "crowded",
    "inputs": [{"path": str(VAL / "images"), "include": [f"{s}.png" for s in stems]}],
    "pipelines": [{"name": "grey", "steps": [{"op": "rgb_to_grey"}]}],
    "models": [{"model": "stardist:stardist_dsb2018_starter", "parameters": {"scale": 1.5}}],
    "outputs": {"root": str(OUT / "runs"), "report": False},
})
result = run(cfg, manager=manager)
assert result.ok, result.failed
images = {s: read_image(result.run_dir / "preprocessed" / "grey" / f"{s}.tif").data for s in stems}
labels = {j["stem"]: read_image(result.run_dir / j["labels"]).data for j in result.record["jobs"]}
print({s[:8]: int(labels[s].max()) for s in stems}, "objects")

# %% [markdown]
# ## Measure every object
# `measure_objects` gives shape (area, circularity, solidity, eccentricity, ...)
# and intensity columns; the run engine writes the same table to
# `tables/objects.csv`.

# %%
tables = {s: measure_objects(labels[s], intensity=images[s]).assign(image=s[:8]) for s in stems}
objects = pd.concat(tables.values(), ignore_index=True)
display(objects[["image", "label", "area", "circularity", "solidity", "eccentricity", "mean_intensity"]].describe().round(2))

# %% [markdown]
# ## Filters on area and circularity
# The dashed box is the filter: objects outside it (debris, merged nuclei) are
# removed. The same filters go in a run configuration as
# `postprocess: {filters: {area: [40, null], circularity: [0.8, null]}}`.

# %%
ranges = {"area": [40, None], "circularity": [0.8, None]}
display(scatter_plot(objects, "area", "circularity", color_by="image", ranges=ranges, logx=True))
s = stems[0]
kept_labels, kept = filter_objects(labels[s], tables[s], ranges)
fig, axes = plt.subplots(1, 2, figsize=(12, 5))
axes[0].imshow(outline_overlay(images[s], labels[s]))
axes[0].set_title(f"all objects ({len(tables[s])})")
axes[1].imshow(outline_overlay(images[s], kept_labels))
axes[1].set_title(f"after the filters ({len(kept)})")
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Classification by a user mask
# A region drawn by the biologist (in Fiji: a polygon, *Edit > Selection >
# Create Mask*, saved as a TIFF and read with `read_image`); here the polygon's
# vertices are typed in. Each object gets the class of the mask under most of
# its pixels (1 = inside, 0 = outside).

# %%
image, lab, table = images[s], kept_labels, kept
user_mask = np.zeros(lab.shape, bool)
rr, cc = polygon([20, 40, 240, 200], [30, 200, 170, 20], lab.shape)
user_mask[rr, cc] = True
table = add_classes(table, lab, user_mask, by="overlap", column="region", class_names={0: "outside", 1: "inside"})
fig, axes = plt.subplots(1, 2, figsize=(12, 5))
axes[0].imshow(user_mask, cmap="gray")
axes[0].set_title("user mask")
axes[1].imshow(outline_overlay(image, lab, classes=table.set_index("label")["region"].to_dict()))
axes[1].set_title("objects coloured by class")
for ax in axes:
    ax.axis("off")
plt.show()
display(table["region_name"].value_counts())

# %% [markdown]
# ## Classification by an automatic mask
# `mask_from_channel` filters an image, thresholds it (Otsu here) and cleans the
# mask. With a second channel (a marker) it classifies nuclei as positive or
# negative; this data set has one channel, so the mask is made from the nuclear
# channel itself, smoothed strongly: it marks the densely packed regions.

# %%
auto_mask = mask_from_channel(image, filter="gaussian", sigma=12, method="otsu", min_size=500)
table = add_classes(table, lab, auto_mask, by="centroid", column="dense", class_names={0: "sparse", 1: "dense"})
fig, axes = plt.subplots(1, 2, figsize=(12, 5))
axes[0].imshow(auto_mask, cmap="gray")
axes[0].set_title("automatic mask")
axes[1].imshow(outline_overlay(image, lab, classes=table.set_index("label")["dense"].to_dict()))
axes[1].set_title("objects by automatic class")
for ax in axes:
    ax.axis("off")
plt.show()
display(table.groupby("dense_name")[["area", "circularity", "mean_intensity"]].mean().round(2))
fig, ax = plt.subplots(figsize=(5, 4))
ax.imshow(class_image(lab, table.set_index("label")["dense"] + 1), cmap="viridis", interpolation="nearest")
ax.set_title("class image (1 sparse, 2 dense)")
ax.axis("off")
plt.show()

# %% [markdown]
# ## PCA and t-SNE of the object properties
# Both maps use the same standardised properties; colours are k-means clusters
# found on those properties (or any column, e.g. the class).

# %%
features = ["area", "circularity", "solidity", "eccentricity", "mean_intensity", "major_axis_length", "minor_axis_length"]
population = pd.concat([measure_objects(*filter_objects(labels[x], tables[x], ranges)[:1], intensity=images[x]).assign(image=x[:8])
                        for x in stems], ignore_index=True)
display(embedding_plot(population, features, method="pca", color_by="image"))
display(embedding_plot(population, features, method="tsne", color_by="cluster", n_clusters=3))
