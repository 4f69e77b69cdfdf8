"""Reshape images with axes: scale, bin, sub-stacks, z projections, channels, RGB to grey, H&E deconvolution.

Every function takes ``(image, axes, ...)`` where ``axes`` is a canonical axes
string (subsequence of ``"TZYXC"``, see :mod:`opsef_orchestrator.io`) and
returns ``(array, axes)``. Tiling lives in :mod:`opsef_orchestrator.tiling`.
"""
from __future__ import annotations

import logging
from typing import Literal, Sequence

import numpy as np

__all__ = [
    "rescale",
    "bin_image",
    "select_z",
    "substack_ranges",
    "substacks",
    "z_project",
    "select_channels",
    "rgb_to_grey",
    "color_deconvolution",
    "sum_dtype",
]

logger = logging.getLogger(__name__)

Result = tuple[np.ndarray, str]


def _check(image: np.ndarray, axes: str, name: str) -> np.ndarray:
    image = np.asarray(image)
    if not isinstance(axes, str) or len(axes) != image.ndim:
        raise ValueError(f"{name}: axes {axes!r} do not match an image of shape {image.shape}")
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"{name}: axes {axes!r} must contain Y and X")
    if image.size == 0:
        raise ValueError(f"{name}: image is empty")
    return image


def _spatial(axes: str, n: int | None = None) -> list[int]:
    """Indices of the Z (if present), Y, X axes."""
    return [axes.index(a) for a in "ZYX" if a in axes]


def _per_axis(value: float | Sequence[float], axes: str, name: str, param: str) -> dict[int, float]:
    """A scalar applies to Y and X; a sequence gives one value per spatial axis (Z, Y, X present)."""
    spatial = _spatial(axes)
    if np.isscalar(value):
        return {axes.index("Y"): float(value), axes.index("X"): float(value)}  # type: ignore[arg-type]
    vals = [float(v) for v in value]  # type: ignore[union-attr]
    if len(vals) != len(spatial):
        raise ValueError(f"{name}: {param} {tuple(vals)} must be one value or one per spatial axis "
                         f"({''.join(axes[i] for i in spatial)})")
    return dict(zip(spatial, vals))


def rescale(image: np.ndarray, axes: str, factor: float | Sequence[float], *, order: int = 1,
            anti_aliasing: bool = True) -> Result:
    """Rescale the spatial axes by ``factor`` (anti-aliased when shrinking); keeps the dtype.

    Parameters
    ----------
    image : ndarray
    axes : str
    factor : float or sequence of float
        One factor for Y and X, or one per spatial axis (Z, Y, X as present).
    order : int
        Spline order (0 nearest, e.g. for labels; 1 linear; 3 cubic).
    anti_aliasing : bool
        Gaussian smoothing before down-scaling (ignored for ``order=0``).

    Examples
    --------
    >>> a = np.arange(16, dtype=np.uint8).reshape(4, 4)
    >>> out, ax = rescale(a, "YX", 0.5)
    >>> out.shape, out.dtype.name, ax
    ((2, 2), 'uint8', 'YX')
    >>> rescale(np.zeros((3, 4, 4, 2)), "ZYXC", (1, 2, 2))[0].shape
    (3, 8, 8, 2)
    """
    from skimage.transform import resize

    from opsef_orchestrator.preprocess import restore_dtype

    image = _check(image, axes, "rescale")
    factors = _per_axis(factor, axes, "rescale", "factor")
    if any(not f > 0 for f in factors.values()):
        raise ValueError(f"rescale: factor must be > 0, got {factor!r}")
    if order not in range(6):
        raise ValueError(f"rescale: order must be 0..5, got {order!r}")
    shape = tuple(max(1, int(round(s * factors.get(i, 1.0)))) for i, s in enumerate(image.shape))
    if shape == image.shape:
        return image.copy(), axes
    if order == 0:
        out = resize(image, shape, order=0, mode="edge", anti_aliasing=False, preserve_range=True)
        return out.astype(image.dtype), axes
    out = resize(image.astype(np.float64), shape, order=order, mode="reflect",
                 anti_aliasing=anti_aliasing and any(f < 1 for f in factors.values()), preserve_range=True)
    return restore_dtype(out, image.dtype), axes


def sum_dtype(dtype: np.dtype | type | str, n: int) -> np.dtype:
    """A dtype that holds the sum of ``n`` values of ``dtype`` without overflow.

    Examples
    --------
    >>> sum_dtype(np.uint8, 10).name, sum_dtype(np.uint16, 100000).name, sum_dtype(np.float32, 5).name
    ('uint16', 'uint64', 'float64')
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        dtype = np.dtype(np.uint8)
    if dtype.kind == "f":
        return np.dtype(np.float64)
    info = np.iinfo(dtype)
    big = max(abs(int(info.max)), abs(int(info.min))) * max(1, int(n))
    candidates = (np.uint16, np.uint32, np.uint64) if dtype.kind == "u" else (np.int16, np.int32, np.int64)
    for c in candidates:
        if np.iinfo(c).max >= big and np.dtype(c).itemsize >= dtype.itemsize:
            return np.dtype(c)
    return np.dtype(np.float64)


def bin_image(image: np.ndarray, axes: str, factor: int | Sequence[int] = 2,
              reduce: Literal["mean", "sum", "max", "min"] = "mean") -> Result:
    """Bin pixels in blocks (e.g. 2x2): edges that do not fill a block are dropped.

    ``"mean"`` gives float32, ``"sum"`` a dtype wide enough not to overflow,
    ``"max"``/``"min"`` keep the dtype.

    Examples
    --------
    >>> a = np.full((4, 5), 200, np.uint8)
    >>> out, _ = bin_image(a, "YX", 2, "sum")
    >>> out.shape, out.dtype.name, int(out[0, 0])
    ((2, 2), 'uint16', 800)
    """
    image = _check(image, axes, "bin_image")
    raw = _per_axis(factor, axes, "bin_image", "factor")
    if any(f < 1 or f != int(f) for f in raw.values()):
        raise ValueError(f"bin_image: factor must be integers >= 1, got {factor!r}")
    factors = {i: int(f) for i, f in raw.items()}
    if reduce not in ("mean", "sum", "max", "min"):
        raise ValueError(f"bin_image: reduce must be 'mean', 'sum', 'max' or 'min', got {reduce!r}")
    crop = tuple(slice(0, (s // factors.get(i, 1)) * factors.get(i, 1)) for i, s in enumerate(image.shape))
    work = image[crop]
    if any(s == 0 for s in work.shape):
        raise ValueError(f"bin_image: factor {factor!r} is larger than the image {image.shape}")
    shape: list[int] = []
    red: list[int] = []
    for i, s in enumerate(work.shape):
        f = factors.get(i, 1)
        shape += [s // f, f]
        red.append(2 * i + 1)
    blocks = work.reshape(shape)
    n = int(np.prod(list(factors.values())))
    if reduce == "mean":
        out = blocks.mean(axis=tuple(red), dtype=np.float64).astype(np.float32)
    elif reduce == "sum":
        out = blocks.sum(axis=tuple(red), dtype=sum_dtype(image.dtype, n))
    elif reduce == "max":
        out = blocks.max(axis=tuple(red))
    else:
        out = blocks.min(axis=tuple(red))
    return out, axes


def select_z(image: np.ndarray, axes: str, start: int = 0, stop: int | None = None, step: int = 1) -> Result:
    """Keep planes ``start:stop:step`` of the Z axis.

    Examples
    --------
    >>> out, ax = select_z(np.zeros((10, 4, 4)), "ZYX", 1, None, 3)
    >>> out.shape, ax
    ((3, 4, 4), 'ZYX')
    """
    image = _check(image, axes, "select_z")
    if "Z" not in axes:
        raise ValueError(f"select_z: image has no Z axis (axes {axes!r})")
    if step < 1:
        raise ValueError(f"select_z: step must be >= 1, got {step!r}")
    iz = axes.index("Z")
    n = image.shape[iz]
    planes = range(n)[slice(start, stop, step)]
    if len(planes) == 0:
        raise ValueError(f"select_z: start={start}, stop={stop}, step={step} select no plane of {n}")
    index = [slice(None)] * image.ndim
    index[iz] = slice(start, stop, step)
    return image[tuple(index)].copy(), axes


def substack_ranges(n: int, size: int, step: int | None = None) -> list[tuple[int, int]]:
    """``(start, stop)`` of sub-stacks of ``size`` planes every ``step`` planes, covering all ``n`` planes.

    Unlike OpSeF-IV the last planes are never dropped: the last sub-stack ends
    at ``n`` (it may overlap its neighbour more).

    Examples
    --------
    >>> substack_ranges(10, 4)
    [(0, 4), (4, 8), (6, 10)]
    >>> substack_ranges(10, 3, 2)
    [(0, 3), (2, 5), (4, 7), (6, 9), (7, 10)]
    >>> substack_ranges(2, 5)
    [(0, 2)]
    """
    if n < 1:
        raise ValueError(f"substack_ranges: n must be >= 1, got {n!r}")
    if size < 1:
        raise ValueError(f"substack_ranges: size must be >= 1, got {size!r}")
    step = size if step is None else step
    if step < 1:
        raise ValueError(f"substack_ranges: step must be >= 1, got {step!r}")
    if size >= n:
        return [(0, n)]
    starts = list(range(0, n - size + 1, step))
    if starts[-1] + size < n:
        starts.append(n - size)
    return [(s, s + size) for s in starts]


def substacks(image: np.ndarray, axes: str, size: int, step: int | None = None) -> list[Result]:
    """Split the Z axis into sub-stacks (see :func:`substack_ranges`); views.

    Examples
    --------
    >>> [s.shape[0] for s, _ in substacks(np.zeros((10, 2, 2)), "ZYX", 4)]
    [4, 4, 4]
    """
    image = _check(image, axes, "substacks")
    if "Z" not in axes:
        raise ValueError(f"substacks: image has no Z axis (axes {axes!r})")
    iz = axes.index("Z")
    out = []
    for a, b in substack_ranges(image.shape[iz], size, step):
        index = [slice(None)] * image.ndim
        index[iz] = slice(a, b)
        out.append((image[tuple(index)], axes))
    return out


_PROJECTIONS = ("max", "min", "sum", "mean", "median")


def z_project(image: np.ndarray, axes: str, method: Literal["max", "min", "sum", "mean", "median"] = "max",
              window: int | None = None, step: int | None = None) -> Result:
    """Project along Z over all planes, or over sliding windows of ``window`` planes.

    ``max``/``min`` keep the dtype; ``sum`` widens integers so it cannot
    overflow (uint8 -> uint16/uint32, float -> float64); ``mean`` and
    ``median`` give float32. With ``window``, windows start every ``step``
    planes (default ``window``) and the last window ends at the last plane;
    the Z axis is kept (one plane per window), else it is removed.

    Examples
    --------
    >>> a = np.full((3, 2, 2), 200, np.uint8)
    >>> s, ax = z_project(a, "ZYX", "sum")
    >>> int(s[0, 0]), s.dtype.name, ax
    (600, 'uint16', 'YX')
    >>> z_project(np.zeros((10, 2, 2)), "ZYX", "max", window=4)[0].shape
    (3, 2, 2)
    """
    image = _check(image, axes, "z_project")
    if "Z" not in axes:
        raise ValueError(f"z_project: image has no Z axis (axes {axes!r})")
    if method not in _PROJECTIONS:
        raise ValueError(f"z_project: method must be one of {_PROJECTIONS}, got {method!r}")
    iz = axes.index("Z")

    def project(block: np.ndarray) -> np.ndarray:
        n = block.shape[iz]
        if method == "max":
            return block.max(axis=iz)
        if method == "min":
            return block.min(axis=iz)
        if method == "sum":
            return block.sum(axis=iz, dtype=sum_dtype(block.dtype, n))
        if method == "mean":
            return block.mean(axis=iz, dtype=np.float64).astype(np.float32)
        return np.median(block, axis=iz).astype(np.float32)

    if window is None:
        return project(image), axes.replace("Z", "")
    if window < 1:
        raise ValueError(f"z_project: window must be >= 1, got {window!r}")
    parts = [project(s) for s, _ in substacks(image, axes, window, step)]
    return np.stack(parts, axis=iz), axes


def select_channels(image: np.ndarray, axes: str, channels: int | Sequence[int]) -> Result:
    """Keep one channel (removes C) or several (keeps C, in the given order).

    Examples
    --------
    >>> a = np.zeros((4, 4, 3))
    >>> select_channels(a, "YXC", 1)[0].shape, select_channels(a, "YXC", [2, 0])[1]
    ((4, 4), 'YXC')
    """
    image = _check(image, axes, "select_channels")
    if "C" not in axes:
        raise ValueError(f"select_channels: image has no C axis (axes {axes!r})")
    ic = axes.index("C")
    n = image.shape[ic]
    single = np.isscalar(channels)
    chans = [channels] if single else list(channels)  # type: ignore[list-item]
    if not chans:
        raise ValueError("select_channels: channels is empty")
    for c in chans:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not -n <= c < n:
            raise ValueError(f"select_channels: channel {c!r} does not exist (the image has {n}: 0..{n - 1})")
    out = np.take(image, chans, axis=ic)
    if single:
        return np.take(out, 0, axis=ic), axes.replace("C", "")
    return out, axes


def _rgb(image: np.ndarray, axes: str, name: str) -> np.ndarray:
    if not axes.endswith("C") or image.shape[-1] not in (3, 4):
        raise ValueError(f"{name}: needs an RGB(A) image with channels last (axes ending in C, 3 or 4 "
                         f"channels), got axes {axes!r} and shape {image.shape}")
    return image[..., :3]


def rgb_to_grey(image: np.ndarray, axes: str) -> Result:
    """Luminance ``0.2125 R + 0.7154 G + 0.0721 B`` (as scikit-image), keeping the intensity range; float32.

    Examples
    --------
    >>> g, ax = rgb_to_grey(np.full((2, 2, 3), 100, np.uint8), "YXC")
    >>> float(g[0, 0]), g.dtype.name, ax
    (100.0, 'float32', 'YX')
    """
    image = _check(image, axes, "rgb_to_grey")
    rgb = _rgb(image, axes, "rgb_to_grey")
    weights = np.array([0.2125, 0.7154, 0.0721])
    return (rgb.astype(np.float64) @ weights).astype(np.float32), axes[:-1]


_STAINS = {"haematoxylin": 0, "hematoxylin": 0, "eosin": 1, "dab": 2}


def color_deconvolution(image: np.ndarray, axes: str,
                        stain: Literal["haematoxylin", "hematoxylin", "eosin", "dab", "all"] = "haematoxylin"
                        ) -> Result:
    """Colour deconvolution of a brightfield RGB image (Ruifrok & Johnston 2001, H-E-DAB); float32.

    Returns the stain's optical density (>= 0, higher = more stain), or with
    ``stain="all"`` the three stains as channels (haematoxylin, eosin, DAB).

    Examples
    --------
    >>> rgb = np.full((2, 2, 3), 255, np.uint8); rgb[0, 0] = (60, 40, 140)   # a bluish nucleus pixel
    >>> h, ax = color_deconvolution(rgb, "YXC", "haematoxylin")
    >>> ax, bool(h[0, 0] > h[1, 1]), h.dtype.name
    ('YX', True, 'float32')
    """
    from skimage.color import rgb2hed

    image = _check(image, axes, "color_deconvolution")
    rgb = _rgb(image, axes, "color_deconvolution")
    if stain != "all" and stain not in _STAINS:
        raise ValueError(f"color_deconvolution: stain must be one of {sorted(_STAINS) + ['all']}, got {stain!r}")
    if rgb.dtype.kind == "f" and float(rgb.max()) > 1.0:
        rgb = rgb / float(rgb.max())
    hed = rgb2hed(rgb, channel_axis=-1).astype(np.float32)
    if stain == "all":
        return hed, axes
    return np.ascontiguousarray(hed[..., _STAINS[stain]]), axes[:-1]
