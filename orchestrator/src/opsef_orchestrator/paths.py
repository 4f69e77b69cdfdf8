"""Where things live: the repository, the shared data, the cache."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["repo_root", "shared_data_dir", "cache_dir", "services_root"]


def repo_root() -> Path:
    """The source checkout (orchestrator/src/opsef_orchestrator/paths.py -> repo)."""
    env = os.environ.get("OPSEF_REPO")
    return Path(env).resolve() if env else Path(__file__).resolve().parents[3]


def services_root() -> Path:
    """Folder holding one sub-folder per model service (``services/``)."""
    env = os.environ.get("OPSEF_SERVICES_DIR")
    return Path(env).resolve() if env else repo_root() / "services"


def shared_data_dir() -> Path | None:
    """The real data set folder (``$OPSEF_SHARED_DATA`` or ``../shared/data`` beside the checkout), if present."""
    env = os.environ.get("OPSEF_SHARED_DATA")
    candidates = [Path(env)] if env else [repo_root().parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None


def cache_dir() -> Path:
    """OpSeF's cache: virtualenvs of the services, framework caches (``$OPSEF_CACHE`` or ``~/.cache/opsef``)."""
    env = os.environ.get("OPSEF_CACHE")
    if env:
        return Path(env).resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "opsef"
