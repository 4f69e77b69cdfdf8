"""Overlays, montages, plots and the self-contained HTML report (issue 6)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from opsef_orchestrator.classify import classify_objects, mask_from_channel
from opsef_orchestrator.evaluation import evaluate_pair, evaluation_rows, leaderboard
from opsef_orchestrator.measure import measure_objects
from opsef_orchestrator.overlays import (
    array_to_png,
    figure_to_png,
    montage_array,
    montage_figure,
    outline_overlay,
    to_uint8,
    write_overlay_stack,
)
from opsef_orchestrator.plots import cluster, embed, embedding_plot, scatter_plot
from opsef_orchestrator.report import png_data_uri, render_report, write_report
from tests.utils import disk_labels, perturb_labels, random_disk_labels


def test_overlay_literal_and_classes():
    lab = np.zeros((10, 10), int)
    lab[1:5, 1:5] = 1
    lab[6:9, 6:9] = 2
    img = np.full((10, 10), 7.0)
    ov = outline_overlay(img, lab, classes={2: 1})
    assert ov[1, 1].tolist() == [255, 255, 0] and ov[6, 6].tolist() == [255, 0, 0]
    assert ov[2, 2].tolist() == ov[0, 0].tolist()  # interior untouched
    big = np.zeros((10, 10), int)
    big[1:8, 1:8] = 1
    thick = outline_overlay(None, big, thickness=2)
    assert thick[2, 2].tolist() == [255, 255, 0] and thick[3, 3].tolist() == [0, 0, 0]
    rgb = np.zeros((10, 10, 4), np.uint8)
    assert outline_overlay(rgb, lab).shape == (10, 10, 3)
    with pytest.raises(ValueError, match="shape"):
        outline_overlay(np.zeros((5, 5)), lab)
    assert to_uint8(np.full((3, 3), np.nan)).max() == 0


def test_montage_and_stack(tmp_path):
    lab = disk_labels()
    tiles = {(p, m): outline_overlay(lab * k, lab) for k, p in enumerate(["raw", "blur"], 1)
             for m in ["stardist", "cellpose", "unet"]}
    fig = montage_figure(tiles, notes={("raw", "unet"): "n=2"}, title="img0")
    png = figure_to_png(fig)
    assert png.startswith(b"\x89PNG") and len(fig.axes) == 6
    arr = montage_array([[tiles[("raw", "stardist")], None], [tiles[("blur", "unet")]]], gap=2)
    assert arr.shape == (64 * 2 + 2, 64 * 2 + 2, 3)
    p = write_overlay_stack(list(tiles.values()) + [np.zeros((10, 12))], tmp_path / "ov.tif",
                            slice_labels=[f"{a}/{b}" for a, b in tiles] + ["small"])
    with tifffile.TiffFile(p) as tf:
        a = tf.asarray()
        assert a.shape == (7, 64, 64, 3) and tf.is_imagej
        assert tf.imagej_metadata["Labels"][0] == "raw/stardist"
    with pytest.raises(ValueError):
        montage_array([[None]])


def test_plots_and_embeddings():
    lab = random_disk_labels((128, 128), n=30, rmin=3, rmax=10, seed=2)
    img = np.random.default_rng(0).random((128, 128)) + lab / 10
    t = measure_objects(lab, img)
    t["class"] = classify_objects(lab, mask_from_channel(img, method="otsu")).reindex(t["label"]).to_numpy()
    fig = scatter_plot(t, "area", "circularity", color_by="class", ranges={"area": (50, None), "circularity": (0.7, 1)})
    assert any(p.get_label() == "filter" for p in fig.axes[0].patches)
    cols = ["area", "circularity", "mean_intensity", "solidity"]
    assert embed(t, cols, "pca").shape == (len(t), 2)
    e = embed(t, cols, "tsne")
    assert e.shape == (len(t), 2) and np.isfinite(e).all()
    c = cluster(t, cols, n_clusters=3)
    assert set(c) <= {0, 1, 2} and len(c) == len(t)
    for method in ("pca", "tsne"):
        assert figure_to_png(embedding_plot(t, cols, method=method)).startswith(b"\x89PNG")
    assert embed(t.head(2), cols, "tsne").shape == (2, 2)  # too few rows: zeros, no error
    assert cluster(t.head(0), cols).size == 0
    with pytest.raises(ValueError, match="nope"):
        scatter_plot(t, "area", "nope")
    with pytest.raises(ValueError, match="method"):
        embed(t, cols, "umap")


def _demo_report(tmp_path: Path, shared_data: Path | None) -> Path:
    """A realistic report: real DSB image + ground truth vs degraded 'models'."""
    if shared_data is not None:
        import imageio.v3 as iio

        f = sorted((shared_data / "dsb2018" / "val" / "masks").glob("*.tif"))[6]
        gt = tifffile.imread(f).astype(np.int32)
        img = iio.imread(shared_data / "dsb2018" / "val" / "images" / (f.stem + ".png"))[..., :3]
        name = f.stem[:10]
    else:
        gt = random_disk_labels((200, 240), n=40, seed=0)
        img = (gt > 0) * 150 + np.random.default_rng(0).integers(0, 60, gt.shape)
        name = "synthetic"
    preds = {("raw", "stardist"): perturb_labels(gt, seed=1, erode=0, shift=(0, 0), merge_frac=0, drop_frac=0.02),
             ("raw", "cellpose"): perturb_labels(gt, seed=2, erode=1, shift=(1, 0)),
             ("blur", "stardist"): perturb_labels(gt, seed=3, erode=1, shift=(1, 1), merge_frac=0.05),
             ("blur", "cellpose"): perturb_labels(gt, seed=4, erode=2, shift=(2, 1), merge_frac=0.2)}
    rows, tiles, notes = [], {}, {}
    for (pipe, model), p in preds.items():
        res = evaluate_pair(gt, p)
        rows += evaluation_rows(res, image=name, pipeline=pipe, model=model)
        tiles[(pipe, model)] = outline_overlay(img, p)
        notes[(pipe, model)] = f"n={res['n_pred']}  F1@0.5={res['f1@0.5']:.2f}"
    lb = leaderboard(pd.DataFrame(rows))
    t = measure_objects(gt, img, channel_names=["r", "g", "b"])
    t["class"] = classify_objects(gt, mask_from_channel(img[..., 0], method="otsu", factor=1.3)).reindex(
        t["label"]).to_numpy()
    ranges = {"area": (30, None), "circularity": (0.6, None)}
    plots = {
        "area vs circularity": scatter_plot(t, "area", "circularity", color_by="class", ranges=ranges),
        "PCA": embedding_plot(t, ["area", "circularity", "mean_r", "solidity"], "pca", color_by="class"),
        "t-SNE (k-means clusters)": embedding_plot(t, ["area", "circularity", "mean_r", "solidity"], "tsne"),
    }
    return write_report(
        tmp_path / "report.html", title=f"OpSeF run: {name}",
        montages={name: montage_figure(tiles, notes=notes, title=name)},
        leaderboard=lb, plots=plots, tables={"objects (ground truth)": t.head(20)},
        run_record={"run": "demo", "filters": ranges, "pipelines": ["raw", "blur"], "models": ["stardist", "cellpose"]},
        images={"ground truth": outline_overlay(img, gt, classes=t.set_index("label")["class"].to_dict())},
    )


def test_report_is_self_contained(tmp_path, shared_data):
    p = _demo_report(tmp_path, shared_data)
    text = p.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"(src|href)=\"(?!data:|#)", text), "only data: URIs and in-page anchors allowed"
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert text.count("data:image/png;base64,") == 5
    assert "Evaluation leaderboard" in text and "Run record" in text and "&quot;filters&quot;" in text
    assert "<b>" not in render_report(title="<b>x</b>")  # escaped
    with pytest.raises(ValueError):
        png_data_uri(b"not a png")
    assert png_data_uri(array_to_png(np.zeros((3, 3)))).startswith("data:image/png;base64,")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_report_renders_in_headless_chromium(tmp_path, shared_data):
    p = _demo_report(tmp_path, shared_data)
    shot = tmp_path / "shot.png"
    res = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1300,2200", p.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert shot.is_file(), res.stderr
    import imageio.v3 as iio

    img = iio.imread(shot)
    assert img.shape[0] == 2200 and img.shape[1] == 1300
    # not blank: the page has text, tables and pictures
    assert img[..., :3].std() > 20
    keep = Path("/tmp/opsef_report_screenshot.png")
    shutil.copy(shot, keep)
