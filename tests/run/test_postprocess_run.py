"""Postprocessing declared in the run configuration, end to end with a real StarDist service:
classification of objects by a mask made from a second channel or by the user's mask images, intensities
measured on the input image, classes in the tables, the class images and the ImageJ export."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from opsef_orchestrator.config import ConfigError, load_config
from opsef_orchestrator.engine import run
from opsef_orchestrator.io import read_image, write_image, write_labels
from opsef_orchestrator.manager import ServiceManager
from opsef_orchestrator.synthetic import synthetic_nuclei

pytestmark = pytest.mark.slow
STARTER = "stardist:stardist_dsb2018_starter"


@pytest.fixture(scope="module")
def two_channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Nuclei in channel 0; a marker in channel 1 inside the nuclei with odd true ids; their true labels."""
    d = tmp_path_factory.mktemp("two_channel")
    for i in range(3):
        img, lab = synthetic_nuclei((192, 192), n=14, seed=40 + i)
        marker = np.where((lab % 2 == 1) & (lab > 0), 3000, 100).astype(np.uint16)
        stem = f"{i:03d}"  # numbers as names: tables must keep them as text ("000", not 0)
        write_image(d / "images" / f"{stem}.tif", np.stack([img, marker], axis=-1), "YXC")
        write_labels(d / "truth" / f"{stem}.tif", lab)
        write_image(d / "masks" / f"{stem}_mask.tif", (marker > 1000).astype(np.uint8), "YX")
    return d


def _config(tmp: Path, data: Path, classify: dict, **postprocess) -> Path:
    cfg = {
        "name": "classes",
        "inputs": [{"path": str(data / "images")}],
        "pipelines": [{"name": "nuclei", "steps": [{"op": "select_channels", "channels": 0}]}],
        "models": [{"model": STARTER}],
        "postprocess": {"classify": classify, **postprocess},
        "outputs": {"root": str(tmp / "runs"), "report": False},
    }
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
    return tmp / "run.yaml"


def _agreement(run_dir: Path, data: Path, table: pd.DataFrame) -> float:
    """Share of predicted objects (lying mostly in one true nucleus) whose class is the true one (odd true id = 1)."""
    right = total = 0
    for stem in sorted(table["image"].unique()):
        combo = table["combination"].iloc[0]
        pred = read_image(run_dir / "labels" / combo / f"{stem}.tif").data
        gt = read_image(data / "truth" / f"{stem}.tif").data
        rows = table[table["image"] == stem].set_index("label")
        for p in rows.index:
            under = gt[pred == p]
            t = np.bincount(under).argmax()  # the true nucleus covering most of the object
            if t == 0 or (under == t).mean() < 0.5:
                continue
            total += 1
            right += int(rows.loc[p, "class"]) == int(t % 2 == 1)
    assert total >= 30, total
    return right / total


def test_classes_from_a_second_channel(manager: ServiceManager, stardist, two_channel: Path, tmp_path: Path) -> None:
    classify = {"channel": 1, "method": "otsu", "names": {0: "negative", 1: "positive"}}
    result = run(load_config(_config(tmp_path, two_channel, classify, intensity_image="input")), manager=manager)
    assert result.ok
    table = pd.read_csv(result.run_dir / "tables" / "objects.csv", dtype={"image": str})
    assert {"class", "class_name", "mean_ch0", "mean_ch1"} <= set(table.columns)  # input intensities: both channels
    assert set(table["class_name"]) == {"negative", "positive"}
    assert _agreement(result.run_dir, two_channel, table) >= 0.9
    # the marker channel's intensity agrees with the classes
    assert table.loc[table["class"] == 1, "mean_ch1"].median() > 5 * table.loc[table["class"] == 0, "mean_ch1"].median()
    combo = table["combination"].iloc[0]
    for stem in table["image"].unique():
        labels = read_image(result.run_dir / "labels" / combo / f"{stem}.tif").data
        classes = read_image(result.run_dir / "classes" / combo / f"{stem}.tif").data
        assert classes.shape == labels.shape and set(np.unique(classes)) <= {0, 1}
        assert not (classes[labels == 0]).any()  # only objects are painted
        rows = table[table["image"] == stem]
        for lab, cls in zip(rows["label"], rows["class"]):
            assert set(np.unique(classes[labels == lab])) == {cls}
    # the class is the ROI group in the ImageJ export of the run
    r = subprocess.run([sys.executable, "-m", "opsef_orchestrator.cli", "export-imagej", str(result.run_dir),
                        "--out", str(tmp_path / "fiji")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from roifile import ImagejRoi

    zips = sorted((tmp_path / "fiji" / combo / "rois").glob("*_RoiSet.zip"))
    assert len(zips) == 3
    with zipfile.ZipFile(zips[0]) as z:
        groups = [ImagejRoi.frombytes(z.read(n)).group for n in z.namelist()]
    assert set(groups) == {0, 1}
    # a second run takes measurements and classes from the cache, identical
    again = run(load_config(tmp_path / "run.yaml"), manager=manager)
    assert not again.record["cache"]["misses"], again.record["cache"]
    assert (again.run_dir / "tables" / "objects.csv").read_bytes() == (result.run_dir / "tables" / "objects.csv").read_bytes()
    assert (again.run_dir / "classes" / combo / "000.tif").read_bytes() == (result.run_dir / "classes" / combo / "000.tif").read_bytes()
    # a changed classification recomputes the measurement tables, classes and plots, not the labels, overlays or montages
    stricter = run(load_config(tmp_path / "run.yaml", ["postprocess.classify.factor=3.0"]), manager=manager)
    assert stricter.record["counts"]["cached"] == 3
    assert stricter.record["cache"]["misses"] == {"measurements": 3, "plots": 1}, stricter.record["cache"]  # coloured by class
    assert stricter.record["cache"]["hits"]["overlays"] == 3
    strict_table = pd.read_csv(stricter.run_dir / "tables" / "objects.csv", dtype={"image": str})
    assert (strict_table["class"] == 1).sum() < (table["class"] == 1).sum()


def test_classes_from_user_masks_by_centroid(manager: ServiceManager, stardist, two_channel: Path, tmp_path: Path) -> None:
    classify = {"mask": {"path": str(two_channel / "masks"), "pattern": "{stem}_mask.tif"}, "assign": "centroid"}
    p = _config(tmp_path, two_channel, classify)
    result = run(load_config(p, ["outputs.parquet=true", "outputs.csv_dialect=european"]), manager=manager)
    table = pd.read_parquet(result.run_dir / "tables" / "objects.parquet")
    pd.testing.assert_frame_equal(table, pd.read_csv(result.run_dir / "tables" / "objects.csv", sep=";", decimal=",",
                                              dtype={"image": str}),
                                  check_dtype=False)
    assert "class_name" not in table.columns and _agreement(result.run_dir, two_channel, table) >= 0.9
    assert "mean_intensity" in table.columns or "mean_ch0" in table.columns  # measured on the preprocessed image


def test_missing_user_mask_gives_class_0_and_the_run_goes_on(manager: ServiceManager, stardist, two_channel: Path,
                                                              tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    classify = {"mask": {"path": str(two_channel / "masks"), "pattern": "{stem}_other.tif"}}
    result = run(load_config(_config(tmp_path, two_channel, classify)), manager=manager)
    table = pd.read_csv(result.run_dir / "tables" / "objects.csv", dtype={"image": str})
    assert result.ok and (table["class"] == 0).all()
    assert "000_other.tif" in caplog.text


@pytest.mark.parametrize("classify, message", [
    ({}, "exactly one of 'mask'"),
    ({"channel": 1, "mask": {"path": "m"}}, "exactly one of 'mask'"),
    ({"channel": -1}, "postprocess.classify.channel"),
    ({"channel": 1, "assign": "nearest"}, "postprocess.classify.assign"),
    ({"channel": 1, "min_fraction": 1.5}, "postprocess.classify.min_fraction"),
    ({"channel": 1, "method": "magic"}, "postprocess.classify.method"),
    ({"channel": 1, "colour": "red"}, "postprocess.classify.colour"),
])
def test_bad_classify_sections_are_refused_naming_the_key(tmp_path: Path, classify: dict, message: str) -> None:
    p = _config(tmp_path, tmp_path, classify)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")) as info:
        load_config(p)
    assert str(p) in str(info.value)
