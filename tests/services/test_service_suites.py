"""Each service's own adapter tests, run with the service's own Python (its framework, its pins)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from opsef_orchestrator.envs import ensure_env, env_python
from opsef_orchestrator.manager import available_services
from opsef_orchestrator.paths import repo_root

ROOT = repo_root()
SERVICES = [s for s in available_services() if (ROOT / "services" / s / "tests").is_dir()]


@pytest.mark.slow
@pytest.mark.parametrize("service", SERVICES)
def test_service_adapter_suite(service: str, tmp_path: Path) -> None:
    sdir = ROOT / "services" / service
    python = env_python(ensure_env(sdir))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "protos" / "src"), str(sdir / "src")]),
           "TF_CPP_MIN_LOG_LEVEL": "2", "OPSEF_CACHE": str(tmp_path / "cache")}
    ini = sdir / "pytest.ini" if (sdir / "pytest.ini").is_file() else ROOT / "services" / "pytest.ini"
    r = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(ini), str(sdir / "tests")],
                       cwd=sdir, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"{service} adapter tests failed:\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
