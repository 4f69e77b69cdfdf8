"""Measurements, filters, classification and tables (issue 6)."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import tifffile

from opsef_orchestrator.classify import add_classes, class_image, classify_objects, mask_from_channel
from opsef_orchestrator.measure import measure_objects, shape_columns
from opsef_orchestrator.postprocess import filter_mask, filter_objects, parse_ranges
from opsef_orchestrator.tables import read_table, write_table
from tests.utils import disk_labels, random_disk_labels


# ---------------------------------------------------------------- measurements
def test_square_literal():
    lab = np.zeros((10, 10), np.uint16)
    lab[2:6, 3:7] = 4
    img = np.zeros((10, 10))
    img[2:6, 3:7] = np.arange(16).reshape(4, 4)
    t = measure_objects(lab, {"a": img, "b": img + 1}, pixel_size=2.0, ratios=[("a", "b")])
    r = t.iloc[0]
    assert r["label"] == 4 and r["area"] == 16 and r["area_phys"] == 64
    assert (r["bbox_min_y"], r["bbox_min_x"], r["bbox_max_y"], r["bbox_max_x"]) == (2, 3, 6, 7)
    assert (r["centroid_y"], r["centroid_x"]) == (3.5, 4.5)
    assert (r["centroid_y_phys"], r["centroid_x_phys"]) == (7.0, 9.0)
    assert r["solidity"] == 1 and r["eccentricity"] == pytest.approx(0)
    assert r["mean_a"] == 7.5 and r["sum_a"] == 120 and r["min_a"] == 0 and r["max_a"] == 15
    assert r["std_a"] == pytest.approx(np.std(np.arange(16)))
    assert r["ratio_a_b"] == pytest.approx(7.5 / 8.5)
    assert r["perimeter_phys"] == 2 * r["perimeter"]
    assert r["equivalent_diameter_phys"] == pytest.approx(2 * np.sqrt(64 / np.pi))


def test_disk_shape_and_circularity():
    lab = disk_labels((80, 80), centers=((40, 40),), radii=(20,))
    elong = np.zeros((80, 80), int)
    elong[30:34, 5:75] = 1
    t = measure_objects(lab)
    assert t.loc[0, "area"] == pytest.approx(np.pi * 400, rel=0.02)
    assert 0.9 < t.loc[0, "circularity"] <= 1.1
    assert measure_objects(elong).loc[0, "circularity"] < 0.3
    assert measure_objects(elong).loc[0, "eccentricity"] > 0.99


def test_empty_and_columns():
    for shape in ((8, 8), (3, 8, 8)):
        t = measure_objects(np.zeros(shape, int), np.zeros(shape), pixel_size=1.0)
        assert len(t) == 0 and t.columns[0] == "label"
        assert set(shape_columns(len(shape))) <= set(t.columns) and "mean_intensity" in t.columns
        assert t["label"].dtype == np.int64


def test_channel_layouts_and_errors():
    lab = disk_labels((32, 32), centers=((10, 10), (22, 22)), radii=(4, 5))
    st = np.stack([lab * 1.0, lab * 2.0], axis=-1)
    a = measure_objects(lab, st)
    b = measure_objects(lab, np.moveaxis(st, -1, 0), channel_names=["x", "y"])
    assert np.allclose(a["mean_ch1"], b["mean_y"]) and np.allclose(a["mean_ch0"], [1, 2])
    with pytest.raises(ValueError, match="intensity shape"):
        measure_objects(lab, np.zeros((5, 5)))
    with pytest.raises(ValueError, match="channel_names"):
        measure_objects(lab, st, channel_names=["only_one"])
    with pytest.raises(ValueError, match="ratios"):
        measure_objects(lab, st, ratios=[("ch0", "nope")])
    with pytest.raises(ValueError, match="pixel_size"):
        measure_objects(lab, pixel_size=(1, 2, 3))
    with pytest.raises(ValueError, match="labels"):
        measure_objects(np.zeros((3, 3), float))


def test_3d_ball_and_anisotropy():
    lab = disk_labels((30, 40, 40), centers=((15, 20, 20),), radii=(10,))
    t = measure_objects(lab, lab.astype(float), pixel_size=(2.0, 0.5, 0.5))
    r = t.iloc[0]
    assert r["volume"] == pytest.approx(4 / 3 * np.pi * 1000, rel=0.03)
    assert r["volume_phys"] == pytest.approx(r["volume"] * 0.5)
    assert 0.85 < r["sphericity"] < 1.05 and 0.9 < r["solidity"] <= 1
    assert "surface_area_phys" not in t.columns  # anisotropic
    flat = np.zeros((3, 10, 10), int)
    flat[1, 2:8, 2:8] = 1  # one voxel thick: hull of voxel corners still has a volume
    assert measure_objects(flat).loc[0, "solidity"] == pytest.approx(1.0)


def test_real_dsb2018_and_fluo3d(shared_data):
    import imageio.v3 as iio

    mdir = shared_data / "dsb2018" / "val" / "masks"
    f = sorted(mdir.glob("*.tif"))[5]
    lab = tifffile.imread(f)
    img = iio.imread(shared_data / "dsb2018" / "val" / "images" / (f.stem + ".png"))[..., :3]
    t = measure_objects(lab, img, channel_names=["r", "g", "b"], pixel_size=0.3)
    ids = np.unique(lab)[1:]
    assert list(t["label"]) == list(ids)
    assert t["area"].sum() == np.count_nonzero(lab)
    assert (t["min_r"] <= t["mean_r"]).all() and (t["mean_r"] <= t["max_r"]).all()
    lab3 = tifffile.imread(shared_data / "fluo3d" / "cho_t00_labels.tif")
    img3 = tifffile.imread(shared_data / "fluo3d" / "cho_t00_img.tif")
    t3 = measure_objects(lab3, img3, pixel_size=(1.0, 0.2, 0.2))
    assert len(t3) == len(np.unique(lab3)) - 1 == 8
    assert t3["volume"].sum() == np.count_nonzero(lab3)
    assert t3["sphericity"].notna().all()


# ---------------------------------------------------------------- filters
def test_filter_objects():
    lab = random_disk_labels((96, 96), n=12, rmin=2, rmax=9, seed=4)
    t = measure_objects(lab)
    lab2, t2 = filter_objects(lab, t, {"area": (50, None), "circularity": [0.5, None]})
    assert (t2["area"] >= 50).all()
    assert set(np.unique(lab2)) - {0} == set(t2["label"])
    kept = lab2 > 0
    assert np.array_equal(lab2[kept], lab[kept])  # ids unchanged
    assert filter_objects(lab, t, {})[1].shape == t.shape
    assert parse_ranges({"area": {"max": 5}}) == {"area": (-np.inf, 5.0)}
    with pytest.raises(ValueError, match="nope"):
        filter_mask(t, {"nope": (0, 1)})
    with pytest.raises(ValueError, match="area"):
        parse_ranges({"area": (5, 1)})
    e, te = filter_objects(np.zeros((4, 4), int), measure_objects(np.zeros((4, 4), int)), {"area": (1, 2)})
    assert len(te) == 0 and not e.any()


# ---------------------------------------------------------------- classification
def test_classify_centroid_vs_overlap():
    lab = np.zeros((10, 10), int)
    lab[0:4, 0:4] = 1  # fully inside
    lab[6:10, 0:4] = 2  # 25 % inside (one column)
    lab[0:4, 6:10] = 3  # outside
    mask = np.zeros((10, 10), bool)
    mask[:, :1] = True
    mask[0:4, 0:4] = True
    ov = classify_objects(lab, mask, "overlap", 0.5)
    assert ov.to_dict() == {1: 1, 2: 0, 3: 0}
    assert classify_objects(lab, mask, "overlap", 0.2).to_dict() == {1: 1, 2: 1, 3: 0}
    assert classify_objects(lab, mask, "centroid").to_dict() == {1: 1, 2: 0, 3: 0}
    multi = mask.astype(int) + 2 * (np.arange(10)[None, :] >= 6)
    assert classify_objects(lab, multi, "centroid").to_dict() == {1: 1, 2: 0, 3: 2}
    t = add_classes(measure_objects(lab), lab, multi, by="centroid", class_names={0: "neg", 1: "pos", 2: "right"})
    assert t["class_name"].tolist() == ["pos", "neg", "right"]
    ci = class_image(lab, classify_objects(lab, multi, "centroid"))
    assert ci[1, 1] == 1 and ci[1, 8] == 2 and ci[8, 1] == 0
    assert len(classify_objects(np.zeros((3, 3), int), np.zeros((3, 3), bool))) == 0
    with pytest.raises(ValueError, match="by"):
        classify_objects(lab, mask, by="nearest")
    with pytest.raises(ValueError, match="mask"):
        classify_objects(lab, mask[:5])


def test_mask_from_second_channel():
    lab = disk_labels((64, 64), centers=((16, 16), (48, 48), (16, 48)), radii=(6, 6, 6))
    rng = np.random.default_rng(0)
    ch2 = rng.normal(10, 1, (64, 64))
    ch2[lab == 1] += 50  # bright
    ch2[lab == 3] += 15  # dim
    m = mask_from_channel(ch2, filter="gaussian", sigma=1, method="otsu", factor=1.0, opening=1)
    assert classify_objects(lab, m).to_dict()[1] == 1 and classify_objects(lab, m).to_dict()[2] == 0
    strict = mask_from_channel(ch2, method=40.0, filter="median", sigma=1)
    assert classify_objects(lab, strict).to_dict() == {1: 1, 2: 0, 3: 0}
    loose = mask_from_channel(ch2, method=20.0, factor=1.0, filter="none", min_size=10)
    assert classify_objects(lab, loose).to_dict() == {1: 1, 2: 0, 3: 1}
    with pytest.raises(ValueError, match="method"):
        mask_from_channel(ch2, method="magic")


# ---------------------------------------------------------------- tables
def test_write_table_dialects(tmp_path):
    df = pd.DataFrame({"label": [1, 2], "area": [1.5, 2.25], "class": ["a", "b"]})
    p = write_table(df, tmp_path / "sub" / "t.csv", dialect="european", parquet=True)
    assert p.read_text().splitlines() == ["label;area;class", "1;1,5;a", "2;2,25;b"]
    pd.testing.assert_frame_equal(read_table(p, "european"), df)
    pd.testing.assert_frame_equal(read_table(p.with_suffix(".parquet")), df)
    p2 = write_table(df, tmp_path / "t.csv")
    assert p2.read_text().splitlines()[1] == "1,1.5,a"
    empty = measure_objects(np.zeros((4, 4), int))
    p3 = write_table(empty, tmp_path / "empty.csv", parquet=True)
    back = read_table(p3)
    assert len(back) == 0 and list(back.columns) == list(empty.columns)
    assert len(pd.read_parquet(tmp_path / "empty.parquet")) == 0
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    with pytest.raises(ValueError, match="dialect"):
        write_table(df, tmp_path / "x.csv", dialect="french")


def test_flat_3d_object_measures_without_math_error() -> None:
    """A 3D object on a single plane has a negative inertia term; lengths are clamped, not a crash."""
    labels = np.zeros((5, 20, 20), np.uint16)
    labels[2, 3:9, 3:12] = 1
    labels[1:4, 12:18, 12:18] = 2
    df = measure_objects(labels)
    assert df.loc[df.label == 1, "minor_axis_length"].item() == 0.0
    assert df.loc[df.label == 2, "minor_axis_length"].item() > 0
