"""CI check of the benchmarks: each one's ``--quick`` mode runs and writes its JSON and Markdown.

This keeps the scripts working; it judges no speed (quick sizes measure
nothing). The benchmarks share one set of services (one state folder), stopped
at the end. ``OPSEF_BENCH_SERVICES`` picks the model families (default
``stardist``: the quickest; the others are covered by the full runs).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from opsef_orchestrator.manager import ServiceManager

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
SERVICES = os.environ.get("OPSEF_BENCH_SERVICES", "stardist")

#: Benchmark -> keys its JSON must have (besides the common ones).
EXPECTED = {
    "boundary": ["rows", "verdicts", "skipped", "target"],
    "native": ["rows", "verdicts", "images", "target"],
    "sweep": ["summary", "services", "record_stages"],
    "wholeslide": ["rows", "growth", "single_tile", "skipped"],
    "cache": ["runs", "summary"],
    "accuracy": ["rows", "references", "gap"],
}
ROW_KEYS = {
    "boundary": ["ratio", "grpc_wall_s", "inproc_predict_s", "share_encode", "share_decode", "share_transfer"],
    "native": ["ratio", "native_s", "opsef_run_s"],
    "wholeslide": ["mpx_per_s", "orchestrator_peak_rss_mb", "service_peak_rss_mb", "cut_by_tiling", "border_recall",
                   "wall_over_service_predict"],
    "accuracy": ["precision", "recall", "f1@0.5", "ap@0.5", "mAP@0.5:0.95"],
}
COMMON = ["benchmark", "quick", "command", "threads", "machine", "wall_s"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Path]:
    """One service state folder for all the quick benchmarks; its services are stopped afterwards."""
    d = tmp_path_factory.mktemp("bench-state")
    yield d
    mgr = ServiceManager(state_dir=d, endpoints={})
    mgr.explicit = {}
    mgr.down()


@pytest.mark.parametrize("name", list(EXPECTED))
def test_quick_mode_writes_results(name: str, state_dir: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPSEF_ENDPOINTS"}
    cmd = [sys.executable, str(BENCH / f"{name}.py"), "--quick", "--out", str(tmp_path), "--state-dir", str(state_dir),
           "--keep-services", "--services", SERVICES, "--threads", "2"]
    proc = subprocess.run(cmd, cwd=BENCH, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{name} --quick failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    doc = json.loads((tmp_path / f"{name}.json").read_text())
    for key in COMMON + EXPECTED[name]:
        assert key in doc, f"{name}.json lacks {key!r}"
    assert doc["benchmark"] == name and doc["quick"] is True
    assert doc["machine"]["cpu_cores"] >= 1
    for key in ROW_KEYS.get(name, []):
        assert doc["rows"], f"{name}.json has no rows"
        for row in doc["rows"]:
            assert key in row, f"{name}.json row lacks {key!r}"
    if name == "wholeslide":
        assert all("vs_single_tile" in r for r in doc["rows"] if r["case"].startswith("2D"))
        assert doc["growth"] and doc["growth"][0]["time_x"] == 1.0
    md = (tmp_path / f"{name}.md").read_text()
    assert md.startswith(f"# Benchmark: {name}") and "CPU cores" in md and "|---" in md
