"""Adapter tests of the template service, run with the service's own Python (no server)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from opsef_protocol.adapter import RuntimeOptions
from opsef_protocol.errors import InvalidArgument
from opsef_protocol.manifest import load_manifest, load_service_spec

SERVICE = Path(__file__).resolve().parents[1]
MODEL = SERVICE / "models" / "threshold_watershed"


def _adapter():
    import importlib

    module, cls = load_service_spec(SERVICE).adapter.split(":")
    adapter_cls = getattr(importlib.import_module(module), cls)
    adapter = adapter_cls(load_manifest(MODEL), MODEL, RuntimeOptions(device="cpu", threads=1))
    adapter.load()
    return adapter_cls, adapter


def test_two_squares_are_two_objects() -> None:
    _, adapter = _adapter()
    img = np.zeros((40, 50), np.uint16)
    img[5:15, 5:15] = 1000
    img[25:35, 30:45] = 1000
    labels = adapter.predict(img, "YX", {"normalize": True})
    assert labels.shape == (40, 50) and labels.dtype == np.uint32 and labels.max() == 2


def test_constant_image_gives_no_objects_and_3d_works() -> None:
    _, adapter = _adapter()
    assert not adapter.predict(np.full((7, 9), 5.0, np.float32), "YX", {}).any()
    vol = np.zeros((6, 20, 20), np.float32)
    vol[1:5, 4:10, 4:10] = 1
    assert adapter.predict(vol, "ZYX", {}).max() == 1


def test_gpu_request_is_refused() -> None:
    adapter_cls, _ = _adapter()
    assert adapter_cls.runtime_info(RuntimeOptions(threads=3)).cpu_threads == 3
    with pytest.raises(InvalidArgument, match="cuda:0"):
        adapter_cls.runtime_info(RuntimeOptions(device="cuda:0"))
