"""Device, GPU memory and thread set-up of the TensorFlow services (U-Net, StarDist).

One function, :func:`configure_tensorflow`, called once from an adapter's
``runtime_info`` with the service's :class:`~opsef_protocol.adapter.RuntimeOptions`:
``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``), ``--memory-fraction``
(a cap on the GPU memory TensorFlow may take; 0 = grow as needed) and
``--threads``. TensorFlow is imported inside it, so this module imports
anywhere (the orchestrator never calls it).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
from typing import Any

from opsef_protocol.adapter import RuntimeOptions
from opsef_protocol.errors import InvalidArgument

__all__ = ["TensorFlowDevice", "configure_tensorflow", "gpu_total_mb", "parse_device"]

logger = logging.getLogger(__name__)


def parse_device(device: str) -> tuple[str, int]:
    """``"auto"`` / ``"cpu"`` / ``"cuda"`` / ``"cuda:N"`` -> (kind, index).

    Examples
    --------
    >>> parse_device("auto"), parse_device("cuda"), parse_device("cuda:2"), parse_device("GPU:1")
    (('auto', 0), ('cuda', 0), ('cuda', 2), ('cuda', 1))
    >>> parse_device("tpu")
    Traceback (most recent call last):
    ...
    opsef_protocol.errors.InvalidArgument: device 'tpu' is not one of auto, cpu, cuda, cuda:N
    """
    d = (device or "auto").strip().lower()
    if d in ("auto", "cpu"):
        return d, 0
    if d in ("cuda", "gpu"):
        return "cuda", 0
    for prefix in ("cuda:", "gpu:"):
        if d.startswith(prefix) and d[len(prefix):].isdigit():
            return "cuda", int(d[len(prefix):])
    raise InvalidArgument(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")


def gpu_total_mb(index: int) -> int | None:
    """Total memory of the ``index``-th visible GPU in MiB from ``nvidia-smi``, or None where it cannot be read.

    ``index`` counts the GPUs this process sees: with ``CUDA_VISIBLE_DEVICES``
    set (a scheduler's allocation: ``2,3`` or GPU UUIDs), it is mapped to the
    entry nvidia-smi knows (physical index or UUID).
    """
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    device = visible[index] if index < len(visible) else str(index)
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", device],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return int(float(out.strip().splitlines()[0]))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


@dataclasses.dataclass(frozen=True)
class TensorFlowDevice:
    """What :func:`configure_tensorflow` set up."""

    #: TensorFlow device string for ``tf.device(...)``: ``"/GPU:0"`` or ``"/CPU:0"``.
    tf_device: str
    #: Device as the service reports it: ``"cuda:N"`` or ``"cpu"``.
    name: str
    #: Devices this process could use: ``("cpu", "cuda:0", ...)``.
    available: tuple[str, ...]
    #: GPU memory cap in MiB (None: memory growth, or CPU).
    memory_limit_mb: int | None
    tensorflow_version: str


def configure_tensorflow(runtime: RuntimeOptions) -> TensorFlowDevice:
    """Make only the requested device visible, cap or grow its memory, set the thread pools.

    Raises
    ------
    InvalidArgument
        If ``runtime.device`` is malformed or names a GPU TensorFlow does not
        see, or ``runtime.memory_fraction`` is outside [0, 1].
    """
    if not 0.0 <= runtime.memory_fraction <= 1.0:
        raise InvalidArgument(f"memory_fraction must be in [0, 1] (0 = no cap), got {runtime.memory_fraction}")
    kind, index = parse_device(runtime.device)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    available = ("cpu",) + tuple(f"cuda:{i}" for i in range(len(gpus)))
    if kind == "cuda" and index >= len(gpus):
        raise InvalidArgument(f"device {runtime.device!r} requested but TensorFlow sees only: {', '.join(available)}"
                              + ("" if gpus else " (a CPU-only build or no driver; use --device cpu or auto)"))
    use_gpu = kind == "cuda" or (kind == "auto" and bool(gpus))
    limit = None
    try:
        if use_gpu:
            gpu = gpus[index]
            tf.config.set_visible_devices([gpu], "GPU")
            limit = _cap_memory(tf, gpu, index, runtime.memory_fraction)
        elif gpus:
            tf.config.set_visible_devices([], "GPU")
    except RuntimeError as exc:  # TensorFlow already initialised (e.g. a second call in one process)
        logger.debug("device configuration left as it was: %s", exc)
    if runtime.threads > 0:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(runtime.threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, runtime.threads)))
        except RuntimeError as exc:
            logger.warning("cannot set TensorFlow threads to %d (already initialised): %s", runtime.threads, exc)
    return TensorFlowDevice(tf_device="/GPU:0" if use_gpu else "/CPU:0", name=f"cuda:{index}" if use_gpu else "cpu",
                            available=available, memory_limit_mb=limit, tensorflow_version=tf.__version__)


def _cap_memory(tf: Any, gpu: Any, index: int, fraction: float) -> int | None:
    if fraction > 0:
        total = gpu_total_mb(index)
        if total:
            limit = int(total * fraction)
            tf.config.set_logical_device_configuration(gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit)])
            logger.info("GPU %d memory capped at %d MiB (%.0f %% of %d MiB)", index, limit, 100 * fraction, total)
            return limit
        logger.warning("cannot read GPU %d memory size; memory_fraction ignored, using memory growth", index)
    tf.config.experimental.set_memory_growth(gpu, True)
    return None
