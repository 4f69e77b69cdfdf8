"""Fixtures for the Cellpose service's adapter tests (run with the service's own Python).

    cd /work/main && PYTHONPATH=protos/src:services/cellpose/src \\
        /path/to/cellpose-venv/bin/python -m pytest services/cellpose/tests -q

Real data is read in place from ``../shared/data`` next to the repository
(override with ``$OPSEF_DATA``); tests that need it skip when it is absent.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

SERVICE_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = SERVICE_DIR.parents[1]
MODELS_DIR = SERVICE_DIR / "models"
STARTER = "cellpose_dsb2018_starter"


def _data_root() -> Path:
    env = os.environ.get("OPSEF_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = _data_root()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set OPSEF_DATA)")
    return root


@pytest.fixture(scope="session")
def dsb2018(data_root: Path) -> Path:
    path = data_root / "dsb2018"
    if not (path / "index.json").is_file():
        pytest.skip(f"dsb2018 not found at {path}")
    return path


@pytest.fixture(scope="session")
def val_items(dsb2018: Path) -> list[dict[str, Any]]:
    """dsb2018/val images with labels (uint8 RGB(A) image, uint16 labels)."""
    from opsef_cellpose.train import load_split

    return load_split(dsb2018, "val")


@pytest.fixture(scope="session")
def val_index(dsb2018: Path) -> dict[str, Any]:
    return {k: v for k, v in json.loads((dsb2018 / "index.json").read_text()).items() if v["split"] == "val"}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cellpose-cache")


@pytest.fixture(scope="session")
def runtime(cache_dir: Path) -> Any:
    from opsef_protocol.adapter import RuntimeOptions

    return RuntimeOptions(device="cpu", threads=2, cache_dir=cache_dir)


@pytest.fixture(scope="session")
def starter(runtime: Any) -> Any:
    """The starter model, loaded once."""
    from opsef_protocol.manifest import load_manifest, verify_weights

    from opsef_cellpose.adapter import CellposeAdapter

    folder = MODELS_DIR / STARTER
    manifest = load_manifest(folder)
    if not all((folder / w.path).is_file() for w in manifest.weights):
        pytest.skip(f"starter weights missing in {folder}; train them with: {manifest.training.get('command')}")
    verify_weights(manifest, folder)
    adapter = CellposeAdapter(manifest, folder, runtime)
    adapter.load()
    return adapter

