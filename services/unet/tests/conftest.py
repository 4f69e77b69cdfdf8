"""Fixtures of the U-Net adapter tests: real data from ``../shared/data`` and the starter model."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

SERVICE_DIR = Path(__file__).resolve().parents[1]
REPO = SERVICE_DIR.parents[1]
#: Real data (read-only): $OPSEF_DATA or ../shared/data beside the repository.
DATA = Path(os.environ.get("OPSEF_DATA", REPO.parent / "shared" / "data"))
DSB = DATA / "dsb2018"
STARTER = SERVICE_DIR / "models" / "unet_dsb2018_starter"

# Keep Keras / TensorFlow caches out of the user's home.
os.environ.setdefault("KERAS_HOME", str(Path(tempfile.gettempdir()) / "opsef-unet-tests-keras"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def dsb() -> Path:
    if not (DSB / "index.json").is_file():
        pytest.skip(f"DSB 2018 data not found at {DSB} (set OPSEF_DATA)")
    return DSB


@pytest.fixture(scope="session")
def runtime_info():
    from opsef_protocol.adapter import RuntimeOptions
    from opsef_unet.adapter import UNetAdapter

    return UNetAdapter.runtime_info(RuntimeOptions(device="auto"))


@pytest.fixture(scope="session")
def starter(runtime_info):
    """The loaded starter model (skipped if its weights are absent)."""
    from opsef_protocol.adapter import RuntimeOptions
    from opsef_protocol.errors import WeightsUnavailable
    from opsef_protocol.manifest import load_manifest, verify_weights
    from opsef_unet.adapter import UNetAdapter

    if not (STARTER / "manifest.yaml").is_file():
        pytest.skip(f"starter model not found at {STARTER}; train it with python -m opsef_unet.train")
    manifest = load_manifest(STARTER)
    try:
        verify_weights(manifest, STARTER)
    except WeightsUnavailable as exc:
        pytest.skip(str(exc))
    adapter = UNetAdapter(manifest, STARTER, RuntimeOptions())
    adapter.load()
    return adapter


@pytest.fixture(scope="session")
def val_samples(dsb):
    from opsef_unet.data import load_split

    return load_split(dsb, "val")
