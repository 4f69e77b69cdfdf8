"""``opsef-orchestrate doctor`` on real service folders, environments and a running service."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from click.testing import CliRunner

from opsef_orchestrator.cli import cli
from opsef_orchestrator.doctor import check_environment, exit_code
from opsef_orchestrator.envs import env_dir

from tests.conformance._support import ServiceProcess, copy_template, start_service


@pytest.fixture(scope="module")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("doctor") / "services"
    copy_template(root, "mynet")
    return root


@pytest.fixture(scope="module")
def running(services_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    proc = start_service(services_dir / "mynet", tmp_path_factory.mktemp("doctor-run"), oom_pixels=0, copy_models=False)
    yield proc
    proc.stop()


def _doctor(*args: str) -> tuple[int, list[dict]]:
    r = CliRunner().invoke(cli, ["doctor", "--json", *args], catch_exceptions=False)
    return r.exit_code, json.loads(r.output)


def _find(checks: list[dict], area: str, subject: str) -> dict:
    found = [c for c in checks if c["area"] == area and c["subject"] == subject]
    assert len(found) == 1, (area, subject, checks)
    return found[0]


def test_healthy_service_passes_every_check(services_dir: Path, running: ServiceProcess, tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"name": "d", "inputs": [{"path": str(tmp_path)}], "models": [{"model": "mynet:threshold_watershed"}],
                                   "tiling": {"tile_size": 1024, "overlap": 64}, "outputs": {"root": str(tmp_path / "runs")},
                                   "endpoints": {"mynet": running.address}}))
    code, checks = _doctor("--services-dir", str(services_dir), "--state-dir", str(tmp_path / "state"), "--config", str(cfg))
    assert code == 0, [c for c in checks if c["status"] == "fail"]
    assert _find(checks, "env", "mynet")["status"] == "ok"
    assert _find(checks, "service", "mynet")["message"].startswith(f"SERVING at {running.address}")
    assert _find(checks, "weights", "mynet/threshold_watershed")["status"] == "ok"
    assert "CPU only" in _find(checks, "gpu", "mynet")["message"]
    assert _find(checks, "limits", "mynet")["status"] == "ok"
    assert {c["subject"] for c in checks if c["area"] == "disk"} == {"cache", "outputs"}


def test_message_limit_below_the_tile_size_is_a_problem(services_dir: Path, running: ServiceProcess, tmp_path: Path) -> None:
    # the running copy allows 32 MiB; a 2048x2048 float32 RGB tile needs 48 MiB
    code, checks = _doctor("--services-dir", str(services_dir), "--state-dir", str(tmp_path), "--quick",
                           "--endpoint", f"mynet={running.address}")
    limit = _find(checks, "limits", "mynet")
    assert code == 1 and limit["status"] == "fail"
    assert "--max-message-mb 49" in limit["fix"] and "tiling.tile_size" in limit["fix"]


def test_corrupt_weights_unreachable_service_and_full_disk(services_dir: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "services"
    shutil.copytree(services_dir / "mynet", root / "mynet")
    weights = root / "mynet" / "models" / "threshold_watershed" / "params.json"
    weights.write_text(weights.read_text().replace("3", "4"))
    code, checks = _doctor("--services-dir", str(root), "--state-dir", str(tmp_path / "state"), "--quick",
                           "--endpoint", "mynet=127.0.0.1:9", "--min-free-gb", "1000000")
    assert code == 1
    w = _find(checks, "weights", "mynet/threshold_watershed")
    assert w["status"] == "fail" and "corrupt" in w["message"] and "git checkout" in w["fix"]
    s = _find(checks, "service", "mynet")
    assert s["status"] == "fail" and "UNAVAILABLE" in s["message"] and "OPSEF_ENDPOINTS" in s["fix"]
    assert _find(checks, "disk", "cache")["status"] == "fail"
    # the text report puts the fixing command under each problem
    r = CliRunner().invoke(cli, ["doctor", "--services-dir", str(root), "--state-dir", str(tmp_path / "state"), "--quick",
                                 "--endpoint", "mynet=127.0.0.1:9"])
    assert r.exit_code == 1 and "[FAIL] weights   mynet/threshold_watershed" in r.output and "fix: restore" in r.output


def test_environment_missing_or_off_its_pins(services_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSEF_CACHE", str(tmp_path / "cache"))
    sdir = services_dir / "mynet"
    [check] = check_environment(sdir)
    assert check.status == "fail" and "not built" in check.message
    assert check.fix == "opsef-orchestrate services install --services mynet"
    # an environment that is marked complete but lacks the pinned packages
    env = env_dir(sdir)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    (env / ".opsef-env-complete").write_text("x\n")
    [check] = check_environment(sdir)
    assert check.status == "fail" and "scikit-image missing (pinned 0.24.0)" in check.message
    assert check.fix.startswith(f"rm -rf {env} && ") and exit_code([check]) == 1


def test_stopped_local_service_is_a_warning_unless_required(services_dir: Path, tmp_path: Path) -> None:
    base = ["--services-dir", str(services_dir), "--state-dir", str(tmp_path), "--quick"]
    code, checks = _doctor(*base)
    stopped = _find(checks, "service", "mynet")
    assert code == 0 and stopped["status"] == "warn" and stopped["fix"] == "opsef-orchestrate services up --services mynet"
    code, checks = _doctor(*base, "--require-running")
    assert code == 1 and _find(checks, "service", "mynet")["status"] == "fail"
