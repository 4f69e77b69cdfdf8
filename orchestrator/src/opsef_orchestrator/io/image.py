"""The in-memory image every reader returns, its error class and axes helpers.

Axes are normalised to a subsequence of ``"TZYXC"``: time first, then depth,
the two image axes, and channels last (the order the segmenter protocol and
scikit-image use), e.g. ``"YX"``, ``"YXC"``, ``"ZYX"``, ``"TZYXC"``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

__all__ = [
    "Image",
    "ImageReadError",
    "CANONICAL_AXES",
    "normalize_axes",
    "select_axes",
    "check_image_data",
    "ZSelection",
]

#: Canonical order of axes letters.
CANONICAL_AXES = "TZYXC"

#: A z selection: one plane, a slice, or ``(start, stop[, step])`` (stop exclusive, ``None`` = to the end).
ZSelection = Union[int, slice, Sequence[Union[int, None]]]


class ImageReadError(ValueError):
    """An image that cannot be read or used; the message starts with the file's path."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


@dataclasses.dataclass
class Image:
    """An image with its axes and physical pixel size.

    Attributes
    ----------
    data : numpy.ndarray
        The pixels (possibly a read-only memory map), axes as in :attr:`axes`.
    axes : str
        One letter per dimension of ``data``, a subsequence of ``"TZYXC"``.
    pixel_size : tuple of (float or None) or None
        Physical ``(z, y, x)`` pixel size in micrometres; ``None`` where unknown.
    path : pathlib.Path or None
        The file it came from.
    series : str or None
        The series name (LIF image name, OME image name or series index).
    metadata : dict
        Extra details (format, source axes, channel names, ...).

    Examples
    --------
    >>> img = Image(np.zeros((4, 5), np.uint8), "YX")
    >>> img.shape, img.ndim_spatial, img.has_channels
    ((4, 5), 2, False)
    """

    data: np.ndarray
    axes: str
    pixel_size: tuple[float | None, float | None, float | None] | None = None
    path: Path | None = None
    series: str | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.axes) != self.data.ndim:
            raise ValueError(f"axes {self.axes!r} do not match data with {self.data.ndim} dimensions")
        if not is_canonical(self.axes):
            raise ValueError(f"axes {self.axes!r} must be a subsequence of {CANONICAL_AXES!r}")

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of :attr:`data`."""
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        """dtype of :attr:`data`."""
        return self.data.dtype

    @property
    def ndim_spatial(self) -> int:
        """2 for YX images, 3 when there is a Z axis."""
        return 3 if "Z" in self.axes else 2

    @property
    def has_channels(self) -> bool:
        """Whether there is a C axis."""
        return "C" in self.axes

    def sizes(self) -> dict[str, int]:
        """``{axis letter: length}``."""
        return dict(zip(self.axes, self.data.shape))

    def with_data(self, data: np.ndarray, axes: str | None = None) -> "Image":
        """A copy with other pixels (and axes), keeping path, pixel size and series."""
        return dataclasses.replace(self, data=data, axes=self.axes if axes is None else axes,
                                   metadata=dict(self.metadata))


def is_canonical(axes: str) -> bool:
    """Whether ``axes`` is a subsequence of ``"TZYXC"`` containing Y and X."""
    pos = [CANONICAL_AXES.find(a) for a in axes]
    return -1 not in pos and pos == sorted(set(pos)) and "Y" in axes and "X" in axes


def normalize_axes(data: np.ndarray, axes: str, path: str | Path | None = None) -> tuple[np.ndarray, str]:
    """Transpose ``data`` with axes ``axes`` to the canonical ``"TZYXC"`` order.

    ``S`` (samples, e.g. RGB) is read as ``C``; ``Q``, ``I`` and other unknown
    letters of length 1 are dropped; one remaining unknown axis is read as Z when
    there is no Z, else a :class:`ImageReadError` asks for explicit axes.

    Parameters
    ----------
    data : numpy.ndarray
        The pixels.
    axes : str
        One letter per dimension (e.g. tifffile's series axes).
    path : str or Path, optional
        For error messages.

    Returns
    -------
    data, axes : numpy.ndarray, str
        A transposed view and its canonical axes.

    Examples
    --------
    >>> d, a = normalize_axes(np.zeros((3, 4, 5)), "CYX")
    >>> d.shape, a
    ((4, 5, 3), 'YXC')
    >>> normalize_axes(np.zeros((2, 4, 5)), "QYX")[1]
    'ZYX'
    """
    axes = axes.upper()
    if len(axes) != data.ndim:
        raise ImageReadError(path, f"axes {axes!r} have {len(axes)} letters but the image has "
                                   f"{data.ndim} dimensions {tuple(data.shape)}")
    if "C" in axes and "S" in axes:
        raise ImageReadError(path, f"image has both channel (C) and sample (S) axes in {axes!r}; "
                                   f"give explicit axes to say how to read it")
    letters = ["C" if a == "S" else a for a in axes]
    # drop length-1 axes that are not canonical
    keep = [i for i, a in enumerate(letters) if a in CANONICAL_AXES or data.shape[i] != 1]
    if len(keep) != len(letters):
        data = data.reshape([data.shape[i] for i in keep])
        letters = [letters[i] for i in keep]
    unknown = [i for i, a in enumerate(letters) if a not in CANONICAL_AXES]
    if len(unknown) == 1 and "Z" not in letters:
        letters[unknown[0]] = "Z"
    elif unknown:
        raise ImageReadError(path, f"cannot tell what axes {''.join(letters[i] for i in unknown)!r} of "
                                   f"{axes!r} (shape {tuple(data.shape)}) are; give explicit axes, e.g. 'TZCYX'")
    if len(set(letters)) != len(letters):
        raise ImageReadError(path, f"axes {axes!r} repeat a letter")
    if "Y" not in letters or "X" not in letters:
        raise ImageReadError(path, f"axes {axes!r} must contain Y and X")
    order = sorted(range(len(letters)), key=lambda i: CANONICAL_AXES.index(letters[i]))
    return data.transpose(order), "".join(letters[i] for i in order)


def _z_slice(z: ZSelection, path: Any) -> int | slice:
    if isinstance(z, (int, np.integer)) and not isinstance(z, bool):
        return int(z)
    if isinstance(z, slice):
        return z
    if isinstance(z, (list, tuple)) and 1 <= len(z) <= 3:
        return slice(*z) if len(z) > 1 else slice(z[0], None)
    raise ImageReadError(path, f"z must be an int, a slice or (start, stop[, step]), got {z!r}")


def select_axes(data: np.ndarray, axes: str, *, channel: int | Sequence[int] | None = None,
                time: int | None = None, z: ZSelection | None = None,
                path: str | Path | None = None) -> tuple[np.ndarray, str]:
    """Select a time point, channel(s) and z range of canonical-axes data.

    An integer removes the axis; a sequence of channels or a z range keeps it.

    Examples
    --------
    >>> d, a = select_axes(np.zeros((2, 3, 4, 5, 2)), "TZYXC", channel=1, time=0, z=(0, 3, 2))
    >>> d.shape, a
    ((2, 4, 5), 'ZYX')
    """
    index: list[Any] = [slice(None)] * data.ndim
    drop: set[str] = set()

    def pick(letter: str, name: str, value: Any) -> None:
        if letter not in axes:
            raise ImageReadError(path, f"has no {name} axis (axes {axes!r}, shape {tuple(data.shape)}) "
                                       f"but {name} {value!r} was asked for")
        i = axes.index(letter)
        n = data.shape[i]
        if isinstance(value, slice):
            rng = range(n)[value]
            if len(rng) == 0:
                raise ImageReadError(path, f"{name} range {value.start}:{value.stop}:{value.step} selects no plane "
                                           f"of {n}")
            index[i] = value
            return
        values = [value] if np.isscalar(value) else list(value)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ImageReadError(path, f"{name} must be an integer index, got {v!r}")
            if not -n <= v < n:
                raise ImageReadError(path, f"{name} {v} does not exist: the image has {n} "
                                           f"({name} 0..{n - 1})")
        if np.isscalar(value):
            index[i] = int(value)
            drop.add(letter)
        else:
            if not values:
                raise ImageReadError(path, f"empty {name} selection")
            index[i] = [int(v) for v in values]

    if time is not None:
        pick("T", "time point", time)
    if z is not None:
        pick("Z", "z plane", _z_slice(z, path))
    if channel is not None:
        pick("C", "channel", channel)
    lists = [i for i, ix in enumerate(index) if isinstance(ix, list)]
    if lists:  # fancy indexing on one axis keeps order and works on memmaps
        i = lists[0]
        data = np.take(data, index[i], axis=i)
        index[i] = slice(None)
    out = data[tuple(index)]
    return out, "".join(a for a in axes if a not in drop)


def check_image_data(data: np.ndarray, path: str | Path | None, *, check_nan: bool = True) -> None:
    """Raise :class:`ImageReadError` for empty images, unsupported dtypes or NaN/inf pixels.

    Examples
    --------
    >>> check_image_data(np.array([[np.nan]]), "a.tif")
    Traceback (most recent call last):
    ...
    opsef_orchestrator.io.image.ImageReadError: a.tif: image contains NaN or infinite pixels
    """
    if data.size == 0:
        raise ImageReadError(path, f"image is empty (shape {tuple(data.shape)})")
    if data.dtype.kind not in "biuf":
        raise ImageReadError(path, f"unsupported pixel type {data.dtype}")
    if check_nan and data.dtype.kind == "f" and not isinstance(data, np.memmap):
        if not np.isfinite(data).all():
            raise ImageReadError(path, "image contains NaN or infinite pixels")
