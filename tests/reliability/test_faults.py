"""Faults of the output storage: a full disk and a read-only folder give a clear error and leave valid files only.

Killing a service or the orchestrator during a sweep is covered in
``tests/run/test_engine.py`` (``test_kill_service_mid_run``,
``test_kill_orchestrator_then_resume``). Here the file system is real: a small
tmpfs that fills up, and a read-only bind mount (root ignores permission bits,
not these).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from opsef_orchestrator.client import SegmenterClient
from opsef_orchestrator.config import load_config
from opsef_orchestrator.engine import RunError, run
from opsef_orchestrator.io import read_image, write_image
from opsef_orchestrator.manager import ServiceManager
from opsef_orchestrator.synthetic import synthetic_nuclei
from tests.reliability._support import fill_disk

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

STARTER = "stardist:stardist_dsb2018_starter"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("faults-in")
    for i in range(4):
        img, _ = synthetic_nuclei((160, 160), n=12, seed=40 + i)
        write_image(d / f"img{i}.tif", img, "YX")
    return d


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".part" in p.name or p.name.endswith(".tmp")]


def _all_outputs_valid(root: Path) -> int:
    """Every TIFF reads, every JSON parses, every journal line but a last cut one parses; returns the TIFF count."""
    n = 0
    for p in root.rglob("*"):
        if p.suffix == ".tif":
            assert read_image(p).data.size > 0, p
            n += 1
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.name == "jobs.jsonl":
            for line in p.read_text().splitlines():
                json.loads(line)
    return n


def _write_config(tmp: Path, images: Path, root: Path, thresholds: list[float]) -> Path:
    p = tmp / f"run-{len(list(tmp.glob('run-*.yaml')))}.yaml"
    p.write_text(yaml.safe_dump({
        "name": "disk", "inputs": [{"path": str(images)}], "models": [{"model": STARTER, "grid": {"prob_threshold": thresholds}}],
        "outputs": {"root": str(root), "report": False, "overlays": False}}))
    return p


def test_full_disk_stops_the_run_cleanly_and_resume_completes(small_disk: Path, images: Path, manager: ServiceManager,
                                                              stardist: SegmenterClient, tmp_path: Path) -> None:
    root = small_disk / "runs"
    first = run(load_config(_write_config(tmp_path, images, root, [0.5])), manager=manager)
    assert first.ok and first.record["counts"]["ok"] == 4
    before = {p: p.read_bytes() for p in first.run_dir.rglob("*") if p.is_file()}
    filler = fill_disk(small_disk, leave=24 * 1024)  # room for a few label files, not for the whole sweep
    cfg = load_config(_write_config(tmp_path, images, root, [0.3, 0.4, 0.6, 0.7]))
    with pytest.raises(RunError) as info:
        run(cfg, manager=manager)
    msg = str(info.value)
    assert "No space left on device" in msg and "resume" in msg, msg
    assert str(small_disk) in msg
    # what was written before is untouched and valid, nothing half-written is left
    assert {p: p.read_bytes() for p in first.run_dir.rglob("*") if p.is_file()} == before
    assert not _leftovers(small_disk)
    _all_outputs_valid(root)
    # free the space and resume: the run completes, nothing that was finished is computed again
    second_dir = next(d for d in root.iterdir() if d.is_dir() and d != first.run_dir and not d.name.startswith("."))
    journal = second_dir / "jobs.jsonl"
    entries_before = [json.loads(x) for x in journal.read_text().splitlines()] if journal.is_file() else []
    done_before = {e["id"] for e in entries_before if e["status"] == "ok"}
    filler.unlink()
    resumed = run(cfg, manager=manager, run_dir=second_dir)
    assert resumed.ok and len(resumed.record["jobs"]) == 16
    redone = {j["id"] for j in resumed.record["jobs"] if j["session"] == resumed.record["session"]}
    assert not (redone & done_before), ([e for e in entries_before if e["id"] in redone],
                                        [j for j in resumed.record["jobs"] if j["id"] in done_before & redone])
    assert _all_outputs_valid(second_dir) >= 16
    assert not _leftovers(small_disk)


def test_full_disk_segment_cli(small_disk: Path, images: Path, stardist: SegmenterClient) -> None:
    out = small_disk / "labels"
    cli = [sys.executable, "-m", "opsef_orchestrator.cli", "segment", "-m", STARTER, "--endpoint",
           f"stardist={stardist.target}", "--no-start", "-o", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "OPSEF_ENDPOINTS"}
    r = subprocess.run(cli + [str(images / "img0.tif")], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    first = (out / "img0_labels.tif").read_bytes()
    fill_disk(small_disk)
    r = subprocess.run(cli + [str(images / f"img{i}.tif") for i in (1, 2, 3)], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("Error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and str(out) in errors[0], r.stderr
    assert (out / "img0_labels.tif").read_bytes() == first
    assert not _leftovers(small_disk)
    _all_outputs_valid(out)


def test_read_only_output_folder(read_only_dir: Path, images: Path, manager: ServiceManager, stardist: SegmenterClient,
                                 tmp_path: Path) -> None:
    with pytest.raises(RunError) as info:
        run(load_config(_write_config(tmp_path, images, read_only_dir / "runs", [0.5])), manager=manager)
    assert "Read-only file system" in str(info.value) and str(read_only_dir) in str(info.value)
    assert (read_only_dir / "existing.txt").read_text() == "written before\n"
    r = subprocess.run([sys.executable, "-m", "opsef_orchestrator.cli", "segment", "-m", STARTER, "--endpoint",
                        f"stardist={stardist.target}", "--no-start", "-o", str(read_only_dir / "out"),
                        str(images / "img0.tif")], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "Read-only file system" in r.stderr and str(read_only_dir / "out") in r.stderr
    with pytest.raises(OSError):
        np.save(read_only_dir / "probe.npy", np.zeros(1))  # the mount really is read-only
