"""Virtual environments of the model services, built on first use and cached.

Each service gets its own virtualenv from its exact pins
(``services/NAME/requirements.txt``), in ``<cache>/envs/NAME-<key>`` where the key
hashes the requirements and the Python version: a change of pins builds a new
environment, an unchanged one is reused across checkouts (CI keeps it). The
service's own code and the protocol package are not installed into it: the
manager puts them on ``PYTHONPATH``, so one environment serves every checkout.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from opsef_protocol.manifest import ServiceSpec, load_service_spec

from opsef_orchestrator.paths import cache_dir

__all__ = ["EnvError", "env_key", "env_dir", "env_python", "ensure_env", "find_python", "env_ready"]

logger = logging.getLogger(__name__)
_MARKER = ".opsef-env-complete"


class EnvError(RuntimeError):
    """A service environment could not be built; the message names the service and the log."""


def find_python(version: str) -> str:
    """An interpreter of ``version`` (e.g. "3.11"): this one if it matches, else ``python3.11`` on PATH."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    found = shutil.which(f"python{version}")
    if not found:
        raise EnvError(f"Python {version} is needed for the service environments but python{version} is not on PATH")
    return found


def env_key(service_dir: Path, spec: ServiceSpec) -> str:
    """12 hex digits identifying an environment: requirements text + Python version."""
    req = (service_dir / spec.requirements).read_bytes()
    return hashlib.sha256(req + f"\npython={spec.python}".encode()).hexdigest()[:12]


def env_dir(service_dir: Path, spec: ServiceSpec | None = None) -> Path:
    spec = spec or load_service_spec(service_dir)
    return cache_dir() / "envs" / f"{spec.name}-{env_key(service_dir, spec)}"


def env_python(env: Path) -> Path:
    return env / "bin" / "python"


def env_ready(service_dir: Path) -> bool:
    """Whether the service's environment for its current pins is built."""
    return (env_dir(service_dir) / _MARKER).is_file()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_env(service_dir: Path, *, quiet: bool = True) -> Path:
    """Build (once) and return the service's virtualenv.

    Safe against concurrent callers (file lock) and interrupted builds (a
    marker file is written last; an unmarked folder is rebuilt).
    """
    service_dir = Path(service_dir).resolve()
    spec = load_service_spec(service_dir)
    env = env_dir(service_dir, spec)
    if (env / _MARKER).is_file():
        return env
    with _locked(env.with_name(env.name + ".lock")):
        if (env / _MARKER).is_file():
            return env
        if env.exists():
            shutil.rmtree(env)
        log = env.with_name(env.name + ".build.log")
        python = find_python(spec.python)
        logger.info("building the %s environment in %s (log: %s); this happens once per set of pins", spec.name, env, log)
        with open(log, "w") as fh:
            steps = [
                [python, "-m", "venv", str(env)],
                [str(env_python(env)), "-m", "pip", "install", "--disable-pip-version-check", "-r",
                 str(service_dir / spec.requirements)],
            ]
            for cmd in steps:
                fh.write("$ " + " ".join(cmd) + "\n")
                fh.flush()
                rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=service_dir, env={**os.environ, "PIP_NO_INPUT": "1"})
                if rc != 0:
                    tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
                    raise EnvError(f"building the {spec.name} environment failed (exit {rc}); see {log}:\n{tail}")
        (env / _MARKER).write_text(env_key(service_dir, spec) + "\n")
        logger.info("built the %s environment", spec.name)
    return env
