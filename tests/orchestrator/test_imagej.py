"""ImageJ / AnnotatorJ round trip (issue 6): ROI zips, label TIFFs, pair lists, real ImageJ."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from click.testing import CliRunner
from roifile import ImagejRoi

from opsef_orchestrator.imagej import (
    export_for_imagej,
    label_outlines,
    labels_to_roi_zip,
    labels_to_rois,
    read_annotatorj_pairs,
    roi_zip_to_labels,
    rois_to_labels,
    write_annotatorj_pairs,
    write_label_tiff,
)
from tests.utils import random_disk_labels

REAL_SETS = {"TCGA-DE-A4MA": (59, 59), "TCGA-S4-A8RO": (117, 116)}  # ROIs, labels after rasterising


def tricky_labels() -> np.ndarray:
    """Square, ring with a hole, two fragments, diagonal pixels, single pixel, touching objects."""
    lab = np.zeros((40, 40), np.uint16)
    lab[2:6, 2:6] = 1
    yy, xx = np.indices(lab.shape)
    d2 = (yy - 20) ** 2 + (xx - 20) ** 2
    lab[(d2 <= 64) & (d2 > 9)] = 2
    lab[30:33, 2:5] = 3
    lab[30:33, 8:10] = 3  # second fragment
    lab[35, 35] = lab[36, 36] = lab[37, 37] = 4  # diagonal chain
    lab[0, 39] = 5  # single pixel at the border
    lab[10:14, 30:34] = 6
    lab[10:14, 34:38] = 7  # touches 6
    lab[24:27, 30:36] = 8
    lab[25, 32] = 0  # hole of one pixel
    return lab


def test_outline_literal():
    loops = label_outlines(np.array([[0, 0, 0], [0, 9, 9], [0, 9, 0]]))[9]
    assert len(loops) == 1
    assert loops[0].tolist() == [[1, 1], [3, 1], [3, 2], [2, 2], [2, 3], [1, 3]]


def test_round_trip_tricky_and_classes(tmp_path):
    lab = tricky_labels()
    classes = {1: 1, 2: 2, 3: 1}
    p = labels_to_roi_zip(lab, tmp_path / "r.zip", classes=classes)
    rois = ImagejRoi.fromfile(p)
    assert [r.name for r in rois] == [f"{k:04d}" for k in range(1, 9)]
    assert [r.group for r in rois] == [1, 2, 1, 0, 0, 0, 0, 0]
    assert rois[1].composite and rois[2].composite and rois[7].composite  # hole, fragments, hole
    assert not rois[3].composite  # diagonal pixels: one traced outline
    back, cl = roi_zip_to_labels(p, lab.shape, return_classes=True)
    assert np.array_equal(back, lab) and back.dtype == np.uint16
    assert cl == {1: 1, 2: 2, 3: 1, 4: 0, 5: 0, 6: 0, 7: 0, 8: 0}


def test_round_trip_random_and_overlap_order():
    for seed in range(3):
        lab = random_disk_labels((100, 120), n=30, rmin=2, rmax=12, seed=seed)
        assert np.array_equal(rois_to_labels(labels_to_rois(lab), lab.shape), lab)
    # later ROIs overwrite earlier ones; names that are not integers give 1..n
    big = ImagejRoi.frompoints([[0, 0], [10, 0], [10, 10], [0, 10]], name="a")
    small = ImagejRoi.frompoints([[2, 2], [5, 2], [5, 5], [2, 5]], name="b")
    lab = rois_to_labels([big, small], (12, 12))
    assert set(np.unique(lab)) == {0, 1, 2} and (lab == 2).sum() == 9 and (lab == 1).sum() == 91
    assert set(np.unique(rois_to_labels([small, big], (12, 12)))) == {0, 2}


def tricky_volume() -> np.ndarray:
    """Objects spanning several slices, one on a single slice, one with a hole on one slice, empty slices."""
    vol = np.zeros((6, 40, 40), np.uint16)
    vol[1:4] = tricky_labels()
    vol[2, 5:9, 20:24] = 9  # only on slice 3 (1-based)
    vol[4, 30:38, 30:38] = 11
    vol[4, 33, 33] = 0  # a hole
    return vol


def test_3d_round_trip_one_roi_per_object_and_slice(tmp_path):
    vol = tricky_volume()
    p = labels_to_roi_zip(vol, tmp_path / "vol.zip", classes={2: 4, 11: 1})
    rois = ImagejRoi.fromfile(p)
    per_slice = sum(len(np.unique(vol[z])) - 1 for z in range(vol.shape[0]))
    assert len(rois) == per_slice
    assert {r.position for r in rois} == {2, 3, 4, 5}
    assert all(r.name == f"{int(r.name[:4]):04d}-z{r.position:04d}" for r in rois)
    back, classes = roi_zip_to_labels(p, vol.shape, return_classes=True)
    assert back.dtype == np.uint16 and np.array_equal(back, vol)
    assert classes[2] == 4 and classes[11] == 1 and classes[9] == 0


def test_3d_export_for_fiji_but_not_annotatorj(tmp_path):
    vol = tricky_volume()
    img = (vol > 0).astype(np.uint8) * 200
    written = export_for_imagej(tmp_path, [("vol", img, vol, {2: 1})])
    assert tifffile.imread(written["labels"][0]).shape == vol.shape
    assert np.array_equal(roi_zip_to_labels(written["rois"][0], vol.shape), vol)
    assert not written["pairs"]  # AnnotatorJ annotates 2D images only
    assert not (tmp_path / "12_TmpRoisFromFiji").exists()


def test_errors_and_3d():
    with pytest.raises(ValueError, match="2D .*or 3D"):
        labels_to_roi_zip(np.zeros((2, 2, 4, 4), int), "x.zip")
    with pytest.raises(ValueError, match="classes"):
        labels_to_rois(np.ones((3, 3), int), classes={1: 300})
    roi = ImagejRoi.frompoints([[1, 1], [4, 1], [4, 4], [1, 4]], name="0003", z=1)
    lab = rois_to_labels([roi], (3, 6, 6))
    assert lab[1].sum() == 9 * 3 and lab[0].sum() == 0
    roi_nopos = ImagejRoi.frompoints([[1, 1], [4, 1], [4, 4]], name="1")
    with pytest.raises(ValueError, match="slice"):
        rois_to_labels([roi_nopos], (3, 6, 6))


def test_label_tiff_16_and_32_bit(tmp_path):
    lab = tricky_labels()
    p = write_label_tiff(lab, tmp_path / "l.tif", pixel_size=0.25)
    with tifffile.TiffFile(p) as tf:
        assert tf.is_imagej and tf.pages[0].dtype == np.uint16
        assert tf.pages[0].tags["XResolution"].value[0] / tf.pages[0].tags["XResolution"].value[1] == pytest.approx(4)
        assert np.array_equal(tf.asarray(), lab)
    big = np.arange(70000, dtype=np.int64).reshape(700, 100)
    with pytest.raises(ValueError, match="65535"):
        write_label_tiff(big, tmp_path / "b.tif")
    p32 = write_label_tiff(big, tmp_path / "b.tif", allow_32bit=True)
    assert tifffile.imread(p32).dtype == np.uint32 and tifffile.imread(p32).max() == 69999
    with pytest.raises(ValueError, match="labels"):
        write_label_tiff(np.zeros((3, 3), float), tmp_path / "f.tif")


def test_annotatorj_pairs_and_export_layout(tmp_path):
    lab = tricky_labels()
    img = (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)
    w = export_for_imagej(tmp_path / "exp", [("a", img, lab, {1: 1, 2: 2}), ("b", img[..., 0], lab, None)])
    root, pairs = read_annotatorj_pairs(w["pairs"][0])
    assert root == (tmp_path / "exp").resolve()
    assert pairs[0] == ["images/a.tif", "masks/a_MaskClass00.tif", "masks/a_MaskClass01.tif",
                        "masks/a_MaskClass02.tif"]
    assert pairs[1] == ["images/b.tif", "masks/b_labels.tif"]
    for rel in [x for p in pairs for x in p]:
        assert (root / rel).is_file()
    assert (root / "12_TmpRoisFromFiji" / "a_MaskClass00_ROIs.zip").is_file()
    assert (root / "12_TmpRoisFromFiji" / "b_labels_ROIs.zip").is_file()
    c1 = tifffile.imread(root / "masks/a_MaskClass01.tif")
    assert set(np.unique(c1)) == {0, 1}
    assert tifffile.imread(root / "images/a.tif").shape == (40, 40, 3)
    lines = w["pairs"][0].read_text().splitlines()
    assert lines[0] == f"root;{root}" and len(lines) == 3
    with pytest.raises(ValueError, match="folder"):
        write_annotatorj_pairs(tmp_path, [["img.tif", "mask.tif"]])


def test_real_roi_sets(shared_data):
    for name, (n_rois, n_labels) in REAL_SETS.items():
        zp = shared_data / "imagej_roi" / name / "RoiSet.zip"
        assert len(ImagejRoi.fromfile(zp)) == n_rois
        lab = roi_zip_to_labels(zp, (512, 512))
        assert len(np.unique(lab)) - 1 == n_labels
        # our export of the imported labels rasterises back to the same pixels
        assert np.array_equal(rois_to_labels(labels_to_rois(lab), lab.shape), lab)


def test_real_dsb2018_round_trip(shared_data):
    files = sorted((shared_data / "dsb2018").glob("*/masks/*.tif"))
    assert files
    n_comp = 0
    for f in files[::3] + [p for p in files if p.name.startswith("e9aadc68")]:
        lab = tifffile.imread(f)
        rois = labels_to_rois(lab)
        n_comp += sum(r.composite for r in rois)
        assert len(rois) == len(np.unique(lab)) - 1
        assert np.array_equal(rois_to_labels(rois, lab.shape), lab), f.name


# ----------------------------------------------------------------------------- CLI
def _folder_of_labels(tmp_path: Path) -> Path:
    src = tmp_path / "seg"
    src.mkdir()
    for i in range(2):
        lab = random_disk_labels((64, 80), n=8, seed=i).astype(np.uint16)
        tifffile.imwrite(src / f"img{i}_labels.tif", lab)
        tifffile.imwrite(src / f"img{i}.tif", (lab > 0).astype(np.uint8) * 200)
    pd.DataFrame({"label": [1, 2], "class": [1, 2]}).to_csv(src / "img0_objects.csv", index=False)
    return src


def test_cli_export_then_import(tmp_path):
    from opsef_orchestrator.cli import cli

    src = _folder_of_labels(tmp_path)
    out = tmp_path / "fiji"
    r = CliRunner().invoke(cli, ["export-imagej", str(src), "--out", str(out), "--pixel-size", "0.5"])
    assert r.exit_code == 0, r.output
    assert (out / "rois" / "img0_RoiSet.zip").is_file() and (out / "10_ForFiji" / "FilePairList_opsef.txt").is_file()
    assert ImagejRoi.fromfile(out / "rois" / "img0_RoiSet.zip")[1].group == 2
    r = CliRunner().invoke(cli, ["import-imagej", str(out), "--out", str(tmp_path / "back"), "--european"])
    assert r.exit_code == 0, r.output
    summary = pd.read_csv(tmp_path / "back" / "summary.csv", sep=";", decimal=",")
    assert sorted(summary["image"]) == ["img0", "img1"]
    t0 = pd.read_csv(tmp_path / "back" / "img0_objects.csv", sep=";", decimal=",")
    assert t0.loc[t0["label"] == 2, "class"].item() == 2 and "mean_intensity" in t0.columns
    for i in range(2):
        assert np.array_equal(tifffile.imread(tmp_path / "back" / f"img{i}_labels.tif"),
                              tifffile.imread(src / f"img{i}_labels.tif"))
    r = CliRunner().invoke(cli, ["export-imagej", str(tmp_path / "back" / ".."), "--out", str(out)])
    assert r.exit_code != 0 and "no label images" in r.output


def test_cli_import_real_roi_sets(tmp_path, shared_data):
    from opsef_orchestrator.cli import cli

    r = CliRunner().invoke(cli, ["import-imagej", str(shared_data / "imagej_roi"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    s = pd.read_csv(tmp_path / "o" / "summary.csv").set_index("image")
    assert s.loc["TCGA-DE-A4MA", "n_objects"] == 59 and s.loc["TCGA-S4-A8RO", "n_objects"] == 116
    t = pd.read_csv(tmp_path / "o" / "TCGA-S4-A8RO_objects.csv")
    assert {"mean_ch0", "mean_ch2", "circularity"} <= set(t.columns)


# ----------------------------------------------------------------------------- real ImageJ
def _imagej_available() -> bool:
    return shutil.which("imagej") is not None and shutil.which("xvfb-run") is not None


def _run_macro(macro: str, tmp_path: Path) -> str:
    m = tmp_path / "m.ijm"
    m.write_text(macro)
    res = subprocess.run(["xvfb-run", "-a", "imagej", "-b", str(m)], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    return res.stdout + res.stderr


@pytest.mark.slow
@pytest.mark.skipif(not _imagej_available(), reason="Debian imagej / xvfb-run not installed")
def test_imagej_opens_our_export(tmp_path, shared_data):
    """ImageJ reads our ROI zip and 16-bit TIFF; its own fill of our ROIs equals our labels;
    its fill of the real manual ROI set equals our rasterisation."""
    lab = tricky_labels()
    extra = random_disk_labels((40, 40), n=6, seed=5)
    lab = np.where((lab == 0) & (extra > 0), extra + 100, lab).astype(np.uint16)
    n = len(np.unique(lab)) - 1
    labels_to_roi_zip(lab, tmp_path / "rois.zip", classes={2: 3})
    write_label_tiff(lab, tmp_path / "labels.tif")
    real = shared_data / "imagej_roi" / "TCGA-S4-A8RO" / "RoiSet.zip"
    macro = f"""
open("{tmp_path}/labels.tif");
print("bitdepth=" + bitDepth());
getStatistics(area, mean, min, max);
print("max=" + max);
close();
newImage("fill", "16-bit black", {lab.shape[1]}, {lab.shape[0]}, 1);
roiManager("Open", "{tmp_path}/rois.zip");
n = roiManager("count");
print("count=" + n);
for (i = 0; i < n; i++) {{ roiManager("select", i); setColor(parseInt(Roi.getName)); fill(); }}
roiManager("select", 1);
print("group2=" + Roi.getGroup);
run("Select None");
saveAs("Tiff", "{tmp_path}/ij_fill.tif");
close();
roiManager("reset");
newImage("real", "16-bit black", 512, 512, 1);
roiManager("Open", "{real}");
m = roiManager("count");
print("realcount=" + m);
for (i = 0; i < m; i++) {{ roiManager("select", i); setColor(i + 1); fill(); }}
run("Select None");
saveAs("Tiff", "{tmp_path}/ij_real.tif");
run("Quit");
"""
    out = _run_macro(macro, tmp_path)
    assert f"count={n}" in out, out
    assert "bitdepth=16" in out and f"max={lab.max()}" in out, out
    assert "group2=3" in out, out
    assert np.array_equal(tifffile.imread(tmp_path / "ij_fill.tif"), lab)
    assert "realcount=117" in out
    assert np.array_equal(tifffile.imread(tmp_path / "ij_real.tif"), roi_zip_to_labels(real, (512, 512)))


@pytest.mark.slow
@pytest.mark.skipif(not _imagej_available(), reason="Debian imagej / xvfb-run not installed")
def test_imagej_opens_our_3d_export(tmp_path):
    """ImageJ puts each ROI of a 3D export on its slice: its own fill of our ROIs equals our label volume."""
    vol = tricky_volume()
    labels_to_roi_zip(vol, tmp_path / "vol.zip")
    write_label_tiff(vol, tmp_path / "vol_labels.tif")
    z, h, w = vol.shape
    macro = f"""
open("{tmp_path}/vol_labels.tif");
print("slices=" + nSlices);
close();
newImage("fill", "16-bit black", {w}, {h}, {z});
roiManager("Open", "{tmp_path}/vol.zip");
n = roiManager("count");
print("count=" + n);
for (i = 0; i < n; i++) {{
  roiManager("select", i);
  setColor(parseInt(substring(Roi.getName, 0, 4)));
  fill();
}}
run("Select None");
saveAs("Tiff", "{tmp_path}/ij_fill3d.tif");
run("Quit");
"""
    out = _run_macro(macro, tmp_path)
    n = sum(len(np.unique(vol[k])) - 1 for k in range(z))
    assert f"slices={z}" in out and f"count={n}" in out, out
    assert np.array_equal(tifffile.imread(tmp_path / "ij_fill3d.tif"), vol)
