"""Preprocessing operations: pure functions on one-channel 2D (or 3D) numpy arrays.

Each takes an image of shape ``(Y, X)`` (or ``(Z, Y, X)`` where
:data:`OPERATIONS` says the operation supports volumes) and returns a new
array of the same shape. Filters and background removal keep the input dtype
(integers rounded and clipped, never wrapped); :func:`clahe`, :func:`sobel`,
:func:`roberts` and :func:`normalize_percentile` return float32;
:func:`to_dtype` converts to the dtype a model wants. Channel, time and
per-plane iteration is done by :mod:`opsef_orchestrator.pipelines`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Callable, Literal, Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "Operation",
    "OPERATIONS",
    "identity",
    "median",
    "mean",
    "gaussian",
    "subtract_constant",
    "rolling_ball",
    "white_tophat",
    "clahe",
    "sobel",
    "roberts",
    "invert",
    "normalize_percentile",
    "to_dtype",
    "restore_dtype",
]

logger = logging.getLogger(__name__)


def _check_image(image: np.ndarray, name: str, ndims: tuple[int, ...] = (2, 3)) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim not in ndims:
        raise ValueError(f"{name}: image must have {' or '.join(map(str, ndims))} dimensions, got shape "
                         f"{image.shape}")
    if image.size == 0:
        raise ValueError(f"{name}: image is empty")
    if image.dtype.kind not in "biuf":
        raise ValueError(f"{name}: unsupported dtype {image.dtype}")
    return image


def restore_dtype(result: np.ndarray, dtype: np.dtype | type | str) -> np.ndarray:
    """Cast a float result back to ``dtype``: integers rounded and clipped to the dtype's range.

    Examples
    --------
    >>> restore_dtype(np.array([-3.0, 2.6, 300.0]), np.uint8)
    array([  0,   3, 255], dtype=uint8)
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return result > 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(result), info.min, info.max).astype(dtype)
    return result.astype(dtype, copy=False)


def _float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32 if image.dtype.itemsize <= 2 or image.dtype == np.float32 else np.float64)


def identity(image: np.ndarray) -> np.ndarray:
    """No operation (OpSeF's ``"none"``); returns a copy.

    Examples
    --------
    >>> identity(np.array([[1, 2]], np.uint8))
    array([[1, 2]], dtype=uint8)
    """
    return np.array(_check_image(image, "identity"), copy=True)


def median(image: np.ndarray, size: int = 3) -> np.ndarray:
    """Median filter with a square (cubic in 3D) kernel of odd ``size``; keeps the dtype.

    Examples
    --------
    >>> a = np.zeros((5, 5), np.uint8); a[2, 2] = 255   # salt noise
    >>> int(median(a, 3).max())
    0
    """
    image = _check_image(image, "median")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise ValueError(f"median: size must be an odd integer >= 1 (3, 5, ...), got {size!r}")
    return ndi.median_filter(image, size=int(size), mode="reflect")


def _disk(radius: float, ndim: int) -> np.ndarray:
    r = int(math.floor(radius))
    grid = np.ogrid[tuple(slice(-r, r + 1) for _ in range(ndim))]
    return sum(g.astype(float) ** 2 for g in grid) <= radius ** 2


def mean(image: np.ndarray, radius: float = 1.0) -> np.ndarray:
    """Mean filter over a disk (ball in 3D) of ``radius`` pixels; keeps the dtype.

    Examples
    --------
    >>> a = np.zeros((5, 5), np.uint8); a[2, 2] = 50
    >>> mean(a, 1)[2, 1:4]   # the radius-1 disk has 5 pixels
    array([10, 10, 10], dtype=uint8)
    """
    image = _check_image(image, "mean")
    if not radius >= 0.5:
        raise ValueError(f"mean: radius must be >= 0.5, got {radius!r}")
    fp = _disk(radius, image.ndim).astype(np.float64)
    fp /= fp.sum()
    return restore_dtype(ndi.correlate(_float(image), fp, mode="reflect"), image.dtype)


def gaussian(image: np.ndarray, sigma: float | Sequence[float] = 1.0) -> np.ndarray:
    """Gaussian blur with standard deviation ``sigma`` (pixels, or one per axis); keeps the dtype.

    Examples
    --------
    >>> a = np.zeros((7, 7), np.float32); a[3, 3] = 1
    >>> g = gaussian(a, 1.0)
    >>> round(float(g.sum()), 4), g.dtype.name, bool(g[3, 3] == g.max())
    (1.0, 'float32', True)
    """
    image = _check_image(image, "gaussian")
    sig = np.atleast_1d(np.asarray(sigma, float))
    if sig.size not in (1, image.ndim) or not np.all(sig >= 0):
        raise ValueError(f"gaussian: sigma must be >= 0, one value or one per axis, got {sigma!r}")
    return restore_dtype(ndi.gaussian_filter(_float(image), sigma=tuple(sig) if sig.size > 1 else float(sig[0]),
                                             mode="reflect"), image.dtype)


def subtract_constant(image: np.ndarray, value: float = 0.0) -> np.ndarray:
    """Subtract a constant background, clipping at the dtype's minimum (no wrap-around); keeps the dtype.

    Examples
    --------
    >>> subtract_constant(np.array([[5, 20]], np.uint8), 10)
    array([[ 0, 10]], dtype=uint8)
    """
    image = _check_image(image, "subtract_constant")
    if not np.isfinite(value):
        raise ValueError(f"subtract_constant: value must be finite, got {value!r}")
    return restore_dtype(image.astype(np.float64) - float(value), image.dtype)


def rolling_ball(image: np.ndarray, radius: float = 50.0, shrink: int | None = None) -> np.ndarray:
    """Remove a smooth background with the rolling-ball algorithm (as ImageJ's Subtract Background).

    For speed the background is estimated on an image shrunk by ``shrink``
    (block minimum; default as ImageJ: 1 up to radius 10, 2 up to 30, 4 up to
    100, else 8) and interpolated back; the result is ``image - background``,
    clipped at 0, in the input dtype.

    Examples
    --------
    >>> yy, xx = np.mgrid[:40, :40]
    >>> ramp = (xx + yy).astype(np.uint16)
    >>> spot = ramp.copy(); spot[18:22, 18:22] += 500
    >>> out = rolling_ball(spot, radius=5)
    >>> int(out[20, 20]) > 450, int(np.median(out)) < 10
    (True, True)
    """
    from skimage.restoration import rolling_ball as _rb
    from skimage.transform import resize

    image = _check_image(image, "rolling_ball")
    if not radius > 0:
        raise ValueError(f"rolling_ball: radius must be > 0, got {radius!r}")
    if shrink is None:
        shrink = 1 if radius <= 10 else 2 if radius <= 30 else 4 if radius <= 100 else 8
    if isinstance(shrink, bool) or not isinstance(shrink, (int, np.integer)) or shrink < 1:
        raise ValueError(f"rolling_ball: shrink must be an integer >= 1, got {shrink!r}")
    work = _float(image)
    shrink = int(min(shrink, *(s for s in image.shape)))
    if shrink > 1:
        pad = [(0, (-s) % shrink) for s in work.shape]
        padded = np.pad(work, pad, mode="edge")
        blocks = padded.reshape(sum(([s // shrink, shrink] for s in padded.shape), []))
        small = blocks.min(axis=tuple(range(1, 2 * work.ndim, 2)))
        bg_small = _rb(small, radius=radius / shrink)
        background = resize(bg_small, padded.shape, order=1, mode="edge", anti_aliasing=False)
        background = background[tuple(slice(0, s) for s in work.shape)]
        background = np.minimum(background, work)
    else:
        background = _rb(work, radius=radius)
    return restore_dtype(work - background, image.dtype)


def white_tophat(image: np.ndarray, radius: int = 15) -> np.ndarray:
    """White top-hat (image minus its opening) with a disk (ball in 3D) of ``radius``; keeps the dtype.

    Removes background structures wider than the disk, keeping small bright objects.

    Examples
    --------
    >>> a = np.full((9, 9), 10, np.uint8); a[4, 4] = 60
    >>> out = white_tophat(a, 2)
    >>> int(out[4, 4]), int(out[0, 0])
    (50, 0)
    """
    from skimage import morphology

    image = _check_image(image, "white_tophat")
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 1:
        raise ValueError(f"white_tophat: radius must be an integer >= 1, got {radius!r}")
    if image.ndim == 2:
        fp = morphology.disk(int(radius), decomposition="sequence" if radius > 2 else None)
    else:
        fp = morphology.ball(int(radius), decomposition="sequence" if radius > 2 else None)
    out = morphology.white_tophat(image, footprint=fp)
    return out.astype(image.dtype, copy=False)


def clahe(image: np.ndarray, tile_grid: int | Sequence[int] = 8, clip_limit: float = 0.01,
          nbins: int = 256) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation; returns float32 in [0, 1].

    Parameters
    ----------
    image : ndarray
        2D or 3D.
    tile_grid : int or sequence of int
        Number of contextual regions per axis (OpenCV's ``tileGridSize``); the
        kernel is ``ceil(shape / tile_grid)``.
    clip_limit : float
        Normalised clip limit in (0, 1] (scikit-image's; higher = more contrast).
    nbins : int
        Histogram bins.

    Examples
    --------
    >>> a = np.tile(np.linspace(100, 110, 32), (32, 1)).astype(np.uint16)
    >>> out = clahe(a, tile_grid=4, clip_limit=0.02)
    >>> out.dtype.name, float(out.min()) >= 0.0, float(out.max()) <= 1.0, float(np.ptp(out)) > 0.5
    ('float32', True, True, True)
    """
    from skimage import exposure

    image = _check_image(image, "clahe")
    grid = (int(tile_grid),) * image.ndim if np.isscalar(tile_grid) else tuple(int(t) for t in tile_grid)
    if len(grid) != image.ndim or any(t < 1 for t in grid):
        raise ValueError(f"clahe: tile_grid must be >= 1, one value or one per axis, got {tile_grid!r}")
    if not 0 < clip_limit <= 1:
        raise ValueError(f"clahe: clip_limit must be in (0, 1], got {clip_limit!r}")
    if nbins < 2:
        raise ValueError(f"clahe: nbins must be >= 2, got {nbins!r}")
    kernel = tuple(max(1, math.ceil(s / t)) for s, t in zip(image.shape, grid))
    lo, hi = float(image.min()), float(image.max())
    if hi == lo:  # a flat image has no contrast to equalise
        return np.zeros(image.shape, np.float32)
    work = (image.astype(np.float64) - lo) / (hi - lo)
    return exposure.equalize_adapthist(work, kernel_size=kernel, clip_limit=clip_limit,
                                       nbins=nbins).astype(np.float32)


def sobel(image: np.ndarray) -> np.ndarray:
    """Sobel edge magnitude (2D or 3D); float32.

    Examples
    --------
    >>> a = np.zeros((5, 6)); a[:, 3:] = 1
    >>> e = sobel(a)
    >>> e.dtype.name, bool(e[2, 2] > 0), float(e[2, 0])
    ('float32', True, 0.0)
    """
    from skimage import filters

    image = _check_image(image, "sobel")
    return filters.sobel(_float(image)).astype(np.float32)


def roberts(image: np.ndarray) -> np.ndarray:
    """Roberts cross edge magnitude (2D only); float32.

    Examples
    --------
    >>> a = np.zeros((5, 6)); a[:, 3:] = 1
    >>> e = roberts(a)
    >>> e.dtype.name, bool(e[2, 2] > 0), float(e[2, 0])
    ('float32', True, 0.0)
    """
    from skimage import filters

    image = _check_image(image, "roberts", ndims=(2,))
    return filters.roberts(_float(image)).astype(np.float32)


def invert(image: np.ndarray, reference: Literal["image", "dtype"] = "image") -> np.ndarray:
    """Invert intensities; keeps the dtype.

    ``reference="image"`` maps the image's own min..max onto max..min (an
    involution); ``reference="dtype"`` uses the dtype's range (floats: ``1 - x``).

    Examples
    --------
    >>> invert(np.array([[10, 20, 30]], np.uint8))
    array([[30, 20, 10]], dtype=uint8)
    >>> invert(np.array([[0, 55]], np.uint8), reference="dtype")
    array([[255, 200]], dtype=uint8)
    """
    image = _check_image(image, "invert")
    if reference == "image":
        lo, hi = image.min(), image.max()
        if image.dtype.kind in "iu":
            return (int(lo) + int(hi) - image.astype(np.int64)).astype(image.dtype)
        if image.dtype.kind == "b":
            return ~image
        return (lo + hi - image).astype(image.dtype)
    if reference == "dtype":
        if image.dtype.kind == "b":
            return ~image
        if image.dtype.kind in "iu":
            info = np.iinfo(image.dtype)
            return (int(info.max) + int(info.min) - image.astype(np.int64)).astype(image.dtype)
        return (1.0 - image).astype(image.dtype)
    raise ValueError(f"invert: reference must be 'image' or 'dtype', got {reference!r}")


def normalize_percentile(image: np.ndarray, low: float = 1.0, high: float = 99.8, clip: bool = False,
                         eps: float = 1e-20) -> np.ndarray:
    """Map the ``low`` and ``high`` percentiles to 0 and 1 (as CSBDeep / StarDist); float32.

    Examples
    --------
    >>> a = np.arange(101, dtype=np.uint8).reshape(1, 101)
    >>> n = normalize_percentile(a, 0, 100)
    >>> float(n.min()), float(n.max()), n.dtype.name
    (0.0, 1.0, 'float32')
    >>> float(normalize_percentile(a, 10, 90, clip=True).max())
    1.0
    """
    image = _check_image(image, "normalize_percentile")
    if not 0 <= low < high <= 100:
        raise ValueError(f"normalize_percentile: need 0 <= low < high <= 100, got low={low!r}, high={high!r}")
    lo, hi = np.percentile(image, [low, high])
    out = (image.astype(np.float32) - np.float32(lo)) / np.float32(max(hi - lo, eps))
    if clip:
        np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32, copy=False)


_TARGET_DTYPES = ("uint8", "uint16", "float32", "float64")


def to_dtype(image: np.ndarray, dtype: str = "uint8",
             in_range: Literal["image", "dtype"] | Sequence[float] = "image") -> np.ndarray:
    """Rescale intensities into the range of ``dtype`` and convert, clipping (never wrapping).

    Parameters
    ----------
    image : ndarray
    dtype : {"uint8", "uint16", "float32", "float64"}
        Target; float targets get values in [0, 1].
    in_range : "image", "dtype" or (low, high)
        Input values mapped onto the target's full range: the image's min..max,
        the input dtype's range (floats: 0..1), or given limits.

    Examples
    --------
    >>> s = np.array([[0, 300, 600]], np.uint32)   # e.g. a sum projection
    >>> to_dtype(s, "uint8")
    array([[  0, 128, 255]], dtype=uint8)
    >>> to_dtype(np.array([[0.0, 0.5, 2.0]]), "uint8", in_range="dtype")
    array([[  0, 128, 255]], dtype=uint8)
    """
    image = _check_image(image, "to_dtype")
    if dtype not in _TARGET_DTYPES:
        raise ValueError(f"to_dtype: dtype must be one of {_TARGET_DTYPES}, got {dtype!r}")
    if isinstance(in_range, str):
        if in_range == "image":
            lo, hi = float(image.min()), float(image.max())
        elif in_range == "dtype":
            if image.dtype.kind in "iu":
                info = np.iinfo(image.dtype)
                lo, hi = float(info.min), float(info.max)
            else:
                lo, hi = 0.0, 1.0
        else:
            raise ValueError(f"to_dtype: in_range must be 'image', 'dtype' or (low, high), got {in_range!r}")
    else:
        if len(in_range) != 2 or not in_range[0] < in_range[1]:
            raise ValueError(f"to_dtype: in_range must be (low, high) with low < high, got {in_range!r}")
        lo, hi = float(in_range[0]), float(in_range[1])
    target = np.dtype(dtype)
    scaled = np.zeros(image.shape, np.float64) if hi <= lo else (image.astype(np.float64) - lo) / (hi - lo)
    np.clip(scaled, 0.0, 1.0, out=scaled)
    if target.kind == "u":
        return restore_dtype(scaled * np.iinfo(target).max, target)
    return scaled.astype(target)


@dataclasses.dataclass(frozen=True)
class Operation:
    """A preprocessing operation of the registry.

    Attributes
    ----------
    name : str
        Name in pipelines.
    function : callable
        ``function(image, **params) -> image``.
    supports_volume : bool
        Whether it can work on a whole ``(Z, Y, X)`` volume.
    default_mode : {"plane", "volume"}
        How it is applied to 3D images unless a step says otherwise.
    output_dtype : str
        ``"same"`` or the dtype it returns.
    description : str
        One line for the configuration reference.
    """

    name: str
    function: Callable[..., np.ndarray]
    supports_volume: bool
    default_mode: Literal["plane", "volume"]
    output_dtype: str
    description: str


#: Preprocessing operations by name.
OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in [
        Operation("none", identity, True, "volume", "same", "No operation."),
        Operation("median", median, True, "plane", "same", "Median filter, square kernel of odd size."),
        Operation("mean", mean, True, "plane", "same", "Mean filter over a disk of radius."),
        Operation("gaussian", gaussian, True, "plane", "same", "Gaussian blur with sigma."),
        Operation("subtract_constant", subtract_constant, True, "volume", "same",
                  "Subtract a constant background, clipped at 0."),
        Operation("rolling_ball", rolling_ball, True, "plane", "same",
                  "Rolling-ball background subtraction (ImageJ-like)."),
        Operation("white_tophat", white_tophat, True, "plane", "same",
                  "White top-hat background removal with a disk of radius."),
        Operation("clahe", clahe, True, "plane", "float32", "CLAHE with a tile grid and clip limit, to [0, 1]."),
        Operation("sobel", sobel, True, "plane", "float32", "Sobel edge magnitude."),
        Operation("roberts", roberts, False, "plane", "float32", "Roberts edge magnitude (2D only)."),
        Operation("invert", invert, True, "volume", "same", "Invert intensities."),
        Operation("normalize", normalize_percentile, True, "volume", "float32",
                  "Percentile normalisation: low/high percentiles to 0/1."),
        Operation("to_dtype", to_dtype, True, "volume", "target",
                  "Rescale into the range of a dtype and convert (clipping, no overflow)."),
    ]
}
