"""The adapter interface every model family implements (``load`` / ``predict`` / ``unload``).

One adapter instance serves one model. The framework (TensorFlow, PyTorch) is
imported lazily inside :meth:`Adapter.load` and :meth:`Adapter.runtime_info`,
never at module import, so the server parses its arguments and answers health
checks before any framework is imported.

The server validates every request before calling :meth:`Adapter.predict`: the
image is finite, non-empty, of an accepted dtype, and its axes are accepted by
the model's manifest; parameters are validated and merged with the manifest's
defaults.
"""
from __future__ import annotations

import abc
import dataclasses
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from opsef_protocol.errors import InvalidArgument
from opsef_protocol.manifest import ModelManifest

__all__ = [
    "Adapter",
    "RuntimeOptions",
    "RuntimeInfo",
    "ACCEPTED_DTYPES",
    "validate_image",
    "to_channels_last",
    "percentile_normalize",
    "rescale_image",
    "resize_labels",
    "pad_to_min_size",
    "relabel_sequential",
]

logger = logging.getLogger(__name__)

#: Image dtypes a service accepts (bool masks, 64-bit integers and complex are rejected).
ACCEPTED_DTYPES = ("uint8", "uint16", "uint32", "int8", "int16", "int32", "float16", "float32", "float64")


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
    """How a service should use the machine."""

    #: "auto", "cpu", "cuda" or "cuda:N".
    device: str = "auto"
    #: CPU threads for inference; 0 = framework default.
    threads: int = 0
    #: GPU memory cap as a fraction of the device (0 = no cap; TensorFlow uses memory growth).
    memory_fraction: float = 0.0
    #: Where framework caches go (Keras, Cellpose, numba, matplotlib).
    cache_dir: Path | None = None
    #: Service-specific options from service.yaml.
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RuntimeInfo:
    """What a framework reports about itself, for ``GetServiceInfo``."""

    framework: str
    framework_version: str
    device: str
    devices_available: tuple[str, ...] = ("cpu",)
    library_versions: dict[str, str] = dataclasses.field(default_factory=dict)
    cpu_threads: int = 0


class Adapter(abc.ABC):
    """One model of one framework family.

    Subclasses set :attr:`family` and implement :meth:`runtime_info`,
    :meth:`load` and :meth:`predict`.
    """

    #: Family name, matched against the manifest's ``family``.
    family: ClassVar[str]

    def __init__(self, manifest: ModelManifest, folder: Path, runtime: RuntimeOptions) -> None:
        if manifest.family != self.family:
            raise ValueError(f"manifest family {manifest.family!r} does not match adapter family {self.family!r}")
        self.manifest = manifest
        self.folder = Path(folder)
        self.runtime = runtime

    @classmethod
    @abc.abstractmethod
    def runtime_info(cls, runtime: RuntimeOptions) -> RuntimeInfo:
        """Configure the framework (device, threads, memory) once and describe it."""

    @classmethod
    def published_weights(cls, manifest: ModelManifest, runtime: RuntimeOptions) -> tuple[str, bool]:
        """Where a published model's weights are looked for, and whether they are there (no download)."""
        return "", False

    @abc.abstractmethod
    def load(self) -> None:
        """Load the weights (the server verifies their sha256 first)."""

    @abc.abstractmethod
    def predict(self, image: np.ndarray, axes: str, params: dict[str, Any]) -> np.ndarray:
        """Segment one image.

        Parameters
        ----------
        image : ndarray
            Validated image with axes ``axes`` (one of the manifest's).
        axes : str
            ``YX``, ``YXC``, ``ZYX`` or ``ZYXC``.
        params : dict
            Validated parameters, the manifest's defaults already merged in.

        Returns
        -------
        ndarray of uint32
            Instance labels of the image's spatial shape, 0 = background.
        """

    def unload(self) -> None:
        """Free the model (default: drop references)."""


def validate_image(image: np.ndarray, axes: str, manifest: ModelManifest) -> np.ndarray:
    """Check an image against what a model accepts; return it as float32 or its own dtype.

    Raises
    ------
    InvalidArgument
        Naming the problem: dtype, empty, non-finite values, axes not accepted,
        channel count.
    """
    if image.dtype.name not in ACCEPTED_DTYPES:
        raise InvalidArgument(
            f"image dtype {image.dtype.name} is not accepted; use one of {', '.join(ACCEPTED_DTYPES)}"
        )
    if image.size == 0:
        raise InvalidArgument(f"image is empty (shape {tuple(image.shape)})")
    if axes not in manifest.axes:
        dims = "/".join(f"{d}D" for d in manifest.dims)
        raise InvalidArgument(
            f"model {manifest.name!r} ({dims}) accepts axes {', '.join(manifest.axes)}; got {axes!r} with shape {tuple(image.shape)}"
        )
    if image.dtype.kind == "f":
        if image.dtype == np.float16:
            image = image.astype(np.float32)
        if not np.isfinite(image).all():
            raise InvalidArgument("image contains NaN or infinite values")
    if "C" in axes and image.shape[-1] > 4:
        raise InvalidArgument(f"image has {image.shape[-1]} channels on its last axis; at most 4 are accepted (axes {axes!r})")
    return image


def to_channels_last(image: np.ndarray, axes: str, channels: int) -> np.ndarray:
    """Return a float32 array with exactly ``channels`` channels on a last axis.

    Grey images get a channel axis; RGB(A) images for a 1-channel model are
    averaged over their first three channels; extra channels are dropped.

    Examples
    --------
    >>> to_channels_last(np.zeros((4, 5), np.uint8), "YX", 1).shape
    (4, 5, 1)
    >>> float(to_channels_last(np.ones((4, 5, 3)), "YXC", 1)[0, 0, 0])
    1.0
    """
    img = np.asarray(image, dtype=np.float32)
    if "C" not in axes:
        img = img[..., None]
    c = img.shape[-1]
    if channels == 1 and c > 1:
        img = img[..., : min(c, 3)].mean(axis=-1, keepdims=True)
    elif c < channels:
        img = np.concatenate([img] + [img[..., :1]] * (channels - c), axis=-1)
    elif c > channels:
        img = img[..., :channels]
    return img


def percentile_normalize(image: np.ndarray, low: float = 1.0, high: float = 99.8, eps: float = 1e-20) -> np.ndarray:
    """Scale ``image`` so that its ``low``/``high`` percentiles map to 0/1 (float32, not clipped).

    Examples
    --------
    >>> x = percentile_normalize(np.arange(101, dtype=float), 0, 100)
    >>> float(x.min()), float(x.max())
    (0.0, 1.0)
    """
    img = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(img, [low, high])
    return ((img - lo) / max(float(hi - lo), eps)).astype(np.float32)


def rescale_image(image: np.ndarray, scale: float, spatial_axes: int) -> np.ndarray:
    """Resize the first ``spatial_axes`` Y/X axes of a float image by ``scale`` (linear, anti-aliased when shrinking).

    Only the last two spatial axes (Y, X) are scaled; Z is left alone.
    """
    if scale == 1.0:
        return image
    from scipy import ndimage

    img = np.asarray(image, dtype=np.float32)
    zoom = [1.0] * img.ndim
    for ax in range(spatial_axes - 2, spatial_axes):
        zoom[ax] = scale
    if scale < 1.0:
        sigma = [0.0] * img.ndim
        for ax in range(spatial_axes - 2, spatial_axes):
            sigma[ax] = (1.0 / scale - 1.0) / 2.0
        img = ndimage.gaussian_filter(img, sigma)
    out_shape = [max(1, int(round(s * z))) for s, z in zip(img.shape, zoom)]
    zoom = [o / s for o, s in zip(out_shape, img.shape)]
    return ndimage.zoom(img, zoom, order=1, grid_mode=True, mode="nearest").astype(np.float32)


def resize_labels(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resize of a label image to ``shape`` (labels stay labels).

    Examples
    --------
    >>> resize_labels(np.array([[1, 2]], np.uint32), (2, 4)).tolist()
    [[1, 1, 2, 2], [1, 1, 2, 2]]
    """
    if tuple(labels.shape) == tuple(shape):
        return labels
    idx = [np.minimum((np.arange(n) + 0.5) * s / n, s - 1).astype(np.intp) for n, s in zip(shape, labels.shape)]
    return labels[np.ix_(*idx)]


def pad_to_min_size(image: np.ndarray, spatial_axes: int, min_size: int, multiple: int = 1) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Pad the spatial axes (reflect) to at least ``min_size`` and a multiple of ``multiple``.

    Returns the padded image and the slices that crop a result back.

    Examples
    --------
    >>> p, crop = pad_to_min_size(np.zeros((3, 5)), 2, 4, multiple=4)
    >>> p.shape, p[crop].shape
    ((4, 8), (3, 5))
    """
    pads, crop = [], []
    for n in image.shape[:spatial_axes]:
        target = max(n, min_size)
        target = -(-target // multiple) * multiple
        pads.append((0, target - n))
        crop.append(slice(0, n))
    pads += [(0, 0)] * (image.ndim - spatial_axes)
    if any(p[1] for p in pads):
        mode = "reflect" if all(n > 1 for n in image.shape[:spatial_axes]) and all(
            p[1] < n for p, n in zip(pads, image.shape)
        ) else "edge"
        image = np.pad(image, pads, mode=mode)
    return image, tuple(crop)


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Relabel to 1..N in order of first appearance-free sorted ids, as uint32.

    Examples
    --------
    >>> relabel_sequential(np.array([[0, 5], [9, 5]])).tolist()
    [[0, 1], [2, 1]]
    """
    labels = np.asarray(labels)
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.uint32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    return lut[labels]
