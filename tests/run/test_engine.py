"""The run engine end to end with real services: sweeps, cache, resume after kills, tiling."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from opsef_orchestrator.config import load_config
from opsef_orchestrator.engine import run
from opsef_orchestrator.evaluation import match_labels
from opsef_orchestrator.io import read_image, write_image, write_labels
from opsef_orchestrator.manager import ServiceManager
from opsef_orchestrator.synthetic import synthetic_nuclei

pytestmark = pytest.mark.slow
STARTER = "stardist:stardist_dsb2018_starter"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("inputs")
    for i in range(6):
        img, lab = synthetic_nuclei((192, 192), n=14, seed=10 + i)
        write_image(d / "images" / f"img{i}.tif", img, "YX")
        write_labels(d / "masks" / f"img{i}.tif", lab)
    return d


def _config(tmp: Path, images: Path, **over) -> Path:
    data = {
        "name": "sweep",
        "inputs": [{"path": str(images / "images")}],
        "ground_truth": {"path": str(images / "masks")},
        "pipelines": [{"name": "none", "steps": []}, {"name": "gauss", "steps": [{"op": "gaussian", "sigma": 1.0}]}],
        "models": [{"model": STARTER, "grid": {"prob_threshold": [0.3, 0.5, 0.7]}}],
        "outputs": {"root": str(tmp / "runs"), "report": False},
    }
    data.update(over)
    tmp.mkdir(parents=True, exist_ok=True)
    p = tmp / "run.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _labels(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): read_image(p).data.tobytes() for p in sorted((run_dir / "labels").rglob("*.tif"))}


def _no_partials(root: Path) -> None:
    leftovers = [p for p in root.rglob("*") if ".part" in p.name or p.name.endswith(".tmp")]
    assert not leftovers, leftovers


def test_sweep_cache_and_record(manager: ServiceManager, stardist, images: Path, tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, images))
    first = run(cfg, manager=manager)
    assert first.ok and first.record["counts"] == {"ok": 36, "cached": 0, "failed": 0}
    labels = _labels(first.run_dir)
    assert len(labels) == 36
    rec = first.record
    assert rec["models"][STARTER]["weights_sha256"] or rec["models"][STARTER]["version"]
    assert rec["services"]["stardist"]["framework"] == "tensorflow"
    assert {"read_preprocess_s", "inference_wall_s", "postprocess_s"} <= set(rec["stages"])
    board = first.evaluation
    assert len(board) == 6 and board["f1@0.5"].max() > 0.7
    assert (first.run_dir / "tables" / "objects.csv").is_file()
    assert (first.run_dir / "plots" / "00_scatter.png").is_file() and (first.run_dir / "plots" / "01_pca.png").is_file()
    # Rerun: nothing is inferred again, a new folder, identical labels.
    second = run(cfg, manager=manager)
    assert second.run_dir != first.run_dir
    assert second.record["counts"] == {"ok": 0, "cached": 36, "failed": 0}
    assert _labels(second.run_dir) == labels
    # ... and no analysis is redone: every table and picture comes from the content cache, identical.
    assert not second.record["cache"]["misses"], second.record["cache"]
    assert second.record["cache"]["hits"]["measurements"] == 36 and second.record["cache"]["hits"]["overlays"] == 36
    assert first.record["cache"]["misses"]["measurements"] == 36
    produced = sorted(str(p.relative_to(first.run_dir)) for d in ("tables", "montages", "plots", "preprocessed")
                      for p in (first.run_dir / d).rglob("*") if p.is_file())
    assert "tables/objects.csv" in produced and "tables/leaderboard.csv" in produced and any("montages" in p for p in produced)
    for rel in produced:
        assert (second.run_dir / rel).read_bytes() == (first.run_dir / rel).read_bytes(), rel
    # Rerun from the record's run.yaml reproduces the run.
    third = run(load_config(first.run_dir / "run.yaml"), manager=manager)
    assert _labels(third.run_dir) == labels
    _no_partials(tmp_path)
    # The best combination goes to Fiji / AnnotatorJ straight from the run folder.
    r = subprocess.run([sys.executable, "-m", "opsef_orchestrator.cli", "export-imagej", str(first.run_dir),
                        "--out", str(tmp_path / "fiji")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    best = board.sort_values("rank")["combination"].iloc[0]
    assert len(list((tmp_path / "fiji" / best / "rois").glob("*_RoiSet.zip"))) == 6


def test_inputs_table_is_complete_when_every_result_is_cached(manager: ServiceManager, stardist, images: Path,
                                                              tmp_path: Path) -> None:
    outputs = {"root": str(tmp_path / "runs"), "report": False, "overlays": False, "preprocessed": False}
    cfg = load_config(_config(tmp_path, images, outputs=outputs))
    first = run(cfg, manager=manager)
    shutil.rmtree(cfg.outputs.root / ".cache" / "input")  # e.g. a cache of an older release: labels hit, inputs miss
    second = run(cfg, manager=manager)
    assert second.record["counts"]["cached"] == 36
    rows = pd.read_csv(second.run_dir / "inputs.csv")
    assert sorted(rows["stem"]) == [f"img{i}" for i in range(6)]
    assert (rows[["shape", "axes"]].to_numpy() == pd.read_csv(first.run_dir / "inputs.csv")[["shape", "axes"]].to_numpy()).all()


def _cli_env(manager: ServiceManager) -> dict[str, str]:
    env = {**os.environ, "OPSEF_STATE_DIR": str(manager.state_dir), "PYTHONUNBUFFERED": "1"}
    env.pop("OPSEF_ENDPOINTS", None)
    return env


def _wait_journal(run_root: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for j in run_root.glob("*/jobs.jsonl"):
            if len(j.read_text().splitlines()) >= n:
                return j.parent
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the run made no progress")


def test_kill_orchestrator_then_resume(manager: ServiceManager, stardist, images: Path, tmp_path: Path) -> None:
    reference = run(load_config(_config(tmp_path / "ref", images)), manager=manager)
    cfg_path = _config(tmp_path, images)
    cli = [sys.executable, "-m", "opsef_orchestrator.cli", "run", str(cfg_path)]
    proc = subprocess.Popen(cli, env=_cli_env(manager), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run_dir = _wait_journal(tmp_path / "runs", 8, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    done_before = {json.loads(x)["id"] for x in (run_dir / "jobs.jsonl").read_text().splitlines() if x.endswith("}")}
    assert 8 <= len(done_before) < 36
    r = subprocess.run(cli + ["--resume", str(run_dir)], env=_cli_env(manager), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["counts"]["failed"] == 0 and len(rec["jobs"]) == 36
    computed_again = {j["id"] for j in rec["jobs"] if j["status"] == "ok" and j["session"] == rec["session"]} & done_before
    assert not computed_again  # nothing recomputed that was complete
    assert sum(j["session"] == rec["session"] for j in rec["jobs"]) == 36 - len(done_before)
    assert _labels(run_dir) == _labels(reference.run_dir)
    _no_partials(tmp_path)


def test_kill_service_mid_run(manager: ServiceManager, stardist, images: Path, tmp_path: Path) -> None:
    reference = run(load_config(_config(tmp_path / "ref", images)), manager=manager)
    # A manager of its own: killing the session's service would leave other tests' clients on a dead port.
    own = ServiceManager(state_dir=tmp_path / "state", endpoints={})
    own.explicit = {}
    try:
        own.up(["stardist"])
        cfg_path = _config(tmp_path, images)
        proc = subprocess.Popen([sys.executable, "-m", "opsef_orchestrator.cli", "run", str(cfg_path)], env=_cli_env(own),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        run_dir = _wait_journal(tmp_path / "runs", 5, proc)
        pid = own._read()["stardist"].pid
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert own._read()["stardist"].pid != pid  # restarted by the run
        rec = json.loads((run_dir / "record.json").read_text())
        assert rec["counts"]["failed"] == 0 and len(rec["jobs"]) == 36
        assert _labels(run_dir) == _labels(reference.run_dir)
        _no_partials(tmp_path / "runs")
    finally:
        own.down()


def test_tiled_equals_untiled_across_borders(manager: ServiceManager, stardist, tmp_path: Path) -> None:
    img, gt = synthetic_nuclei((700, 650), n=160, radius=(6, 11), seed=5)
    write_image(tmp_path / "in" / "big.tif", img, "YX")
    base = {"name": "tiles", "inputs": [{"path": str(tmp_path / "in")}], "models": [{"model": STARTER}],
            "outputs": {"root": str(tmp_path / "runs"), "report": False, "overlays": False}}
    results = {}
    for name, tiling in {"untiled": {"tile_size": 2048, "overlap": 128}, "tiled": {"tile_size": 320, "overlap": 64}}.items():
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump({**base, "tiling": tiling}))
        res = run(load_config(p), manager=manager)
        job = res.record["jobs"][0]
        assert job["status"] == "ok"
        results[name] = (read_image(res.run_dir / job["labels"]).data, job.get("requests"))
    (untiled, n1), (tiled, n2) = results["untiled"], results["tiled"]
    assert n1 == 1 and n2 >= 4
    m = match_labels(untiled, tiled, 0.5)
    assert m.f1 > 0.97, m
    # objects across tile borders are one object: none cut in two (a split), none glued to another (a merge), none
    # duplicated (a false positive); a few nuclei at the image's edge may be missed by the model in a tile (its
    # percentile normalisation sees less of the image)
    assert m.splits == 0 and m.merges == 0 and m.fp <= 1 and m.fn <= 3, m
    assert match_labels(gt, tiled, 0.5).f1 > 0.8
    assert not list((tmp_path / "runs" / ".cache").glob("scratch/*"))  # the on-disk stitching buffer is gone


def test_failed_job_is_recorded_and_run_goes_on(manager: ServiceManager, stardist, images: Path, tmp_path: Path) -> None:
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "broken.tif").write_bytes(b"II*\x00garbage")
    write_image(tmp_path / "mixed" / "ok.tif", read_image(images / "images" / "img0.tif").data, "YX")
    p = _config(tmp_path, images, inputs=[{"path": str(tmp_path / "mixed")}], ground_truth=None,
                models=[{"model": STARTER}], pipelines=[{"name": "none", "steps": []}])
    res = run(load_config(p), manager=manager)
    assert not res.ok and len(res.failed) == 1
    assert "broken.tif" in res.failed[0]["error"]
    assert res.record["counts"]["ok"] == 1
