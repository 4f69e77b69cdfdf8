"""The README's main job, on a small real subset: services started automatically, labels and scores written."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from opsef_orchestrator.demo import demo_config, find_demo_data, make_sample_set
from opsef_orchestrator.manager import ServiceManager
from opsef_orchestrator.segmentation import ModelRef


def test_demo_config_from_a_folder(tmp_path: Path) -> None:
    data = make_sample_set(tmp_path / "sample", n=2)
    images, masks = find_demo_data(data, tmp_path)
    cfg = demo_config(images, masks, tmp_path / "out", (ModelRef("stardist", "m"),))
    assert cfg.ground_truth is not None and cfg.ground_truth.pattern == "{stem}.tif"
    with pytest.raises(ValueError, match="not a folder"):
        find_demo_data(tmp_path / "missing", tmp_path)


@pytest.mark.slow
def test_demo_cli_on_real_subset(manager: ServiceManager, stardist, shared_data: Path, tmp_path: Path) -> None:
    val = shared_data / "dsb2018" / "val"
    data = tmp_path / "data"
    for sub, ext in (("images", ".png"), ("masks", ".tif")):
        (data / sub).mkdir(parents=True)
        for p in sorted((val / "images").glob("*.png"))[:2]:
            (data / sub / f"{p.stem}{ext}").symlink_to(val / sub / f"{p.stem}{ext}")
    env = {**os.environ, "OPSEF_STATE_DIR": str(manager.state_dir)}
    env.pop("OPSEF_ENDPOINTS", None)
    r = subprocess.run([sys.executable, "-m", "opsef_orchestrator.cli", "demo", "--data", str(data), "-o", str(tmp_path / "out"),
                        "--models", "stardist:stardist_dsb2018_starter"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "precision" in r.stdout and "recall" in r.stdout and "F1" in r.stdout
    (run_dir,) = (tmp_path / "out").glob("demo-*")
    assert len(list((run_dir / "labels").rglob("*.tif"))) == 2
    assert (run_dir / "tables" / "leaderboard.csv").is_file() and (run_dir / "report.html").is_file()
