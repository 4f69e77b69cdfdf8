"""The local service manager: up, status, down, restart after kill -9, the CLI's view."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opsef_orchestrator.client import SegmenterClient
from opsef_orchestrator.manager import ServiceManager, parse_endpoints

pytestmark = pytest.mark.slow


def test_parse_endpoints_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="NAME=HOST:PORT"):
        parse_endpoints("stardist")


def test_up_is_idempotent_and_status_reports(manager: ServiceManager, stardist: SegmenterClient) -> None:
    first = manager.endpoint("stardist")
    assert manager.up(["stardist"])["stardist"] == first  # already running: not started twice
    assert first.startswith("127.0.0.1:")
    (row,) = manager.status(["stardist"])
    assert row["status"] == "SERVING" and row["framework"] == "tensorflow" and row["device"] == "cpu"
    assert any(m["name"] == "stardist_dsb2018_starter" and m["weights_present"] for m in row["models"])


def test_restart_after_kill_and_graceful_down(tmp_path: Path) -> None:
    mgr = ServiceManager(state_dir=tmp_path, endpoints={})
    mgr.explicit = {}
    try:
        address = mgr.up(["stardist"])["stardist"]
        pid = mgr._read()["stardist"].pid
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while mgr.running("stardist") and time.monotonic() < deadline:
            mgr._reap("stardist")
            time.sleep(0.1)
        assert not mgr.running("stardist")
        new_address = mgr.ensure_running("stardist")
        with SegmenterClient(new_address) as c:
            assert c.health_status() == "SERVING"
        assert mgr._read()["stardist"].pid != pid
        log = mgr.logs("stardist", 200)
        assert "SERVING on" in log
    finally:
        assert mgr.down(["stardist"]) == ["stardist"]
    assert "shutting down gracefully" in (tmp_path / "stardist.log").read_text()
    assert not mgr.running("stardist") and "stardist" not in mgr.endpoints()
    del address


def test_cli_status_and_segment(manager: ServiceManager, stardist: SegmenterClient, tmp_path: Path, shared_data: Path) -> None:
    env = {**os.environ, "OPSEF_STATE_DIR": str(manager.state_dir)}
    env.pop("OPSEF_ENDPOINTS", None)
    cli = [sys.executable, "-m", "opsef_orchestrator.cli"]
    r = subprocess.run(cli + ["services", "status", "--services", "stardist"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "SERVING" in r.stdout and "tensorflow" in r.stdout and "stardist_dsb2018_starter" in r.stdout
    image = sorted((shared_data / "dsb2018" / "val" / "images").glob("*.png"))[0]
    r = subprocess.run(cli + ["segment", "--model", "stardist:stardist_dsb2018_starter", str(image), "-o", str(tmp_path)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    out = tmp_path / f"{image.stem}_labels.tif"
    assert out.is_file() and "objects" in r.stdout
    r = subprocess.run(cli + ["segment", "--model", "stardist", str(image), "-o", str(tmp_path)], capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "SERVICE:MODEL" in r.stderr
    assert "Traceback" not in r.stderr
