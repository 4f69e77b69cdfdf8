"""TensorFlow device, memory-cap and thread set-up shared by the TensorFlow services (runs in this service's env)."""
from __future__ import annotations

import pytest

from opsef_protocol.adapter import RuntimeOptions
from opsef_protocol.errors import InvalidArgument
from opsef_protocol.tf_runtime import configure_tensorflow


def test_cpu_is_chosen_and_reported() -> None:
    dev = configure_tensorflow(RuntimeOptions(device="cpu", threads=1))
    assert (dev.tf_device, dev.name, dev.memory_limit_mb) == ("/CPU:0", "cpu", None)
    assert dev.available[0] == "cpu" and dev.tensorflow_version


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_memory_fraction_outside_0_1_is_refused(fraction: float) -> None:
    with pytest.raises(InvalidArgument, match="memory_fraction"):
        configure_tensorflow(RuntimeOptions(device="cpu", memory_fraction=fraction))


def test_missing_gpu_is_refused_naming_it() -> None:
    with pytest.raises(InvalidArgument, match="cuda:99"):
        configure_tensorflow(RuntimeOptions(device="cuda:99"))


def test_malformed_device_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="not one of auto, cpu, cuda"):
        configure_tensorflow(RuntimeOptions(device="gpu0"))
