"""Numpy <-> ``Tensor`` message codec.

Arrays travel as dtype, shape, axes and raw little-endian C-order bytes.

Examples
--------
>>> import numpy as np
>>> from opsef_protocol.codec import to_tensor, from_tensor
>>> a = np.arange(6, dtype=np.uint16).reshape(2, 3)
>>> b, axes = from_tensor(to_tensor(a, "YX"))
>>> bool((a == b).all()), b.dtype.name, axes
(True, 'uint16', 'YX')
"""
from __future__ import annotations

import math

import numpy as np

from opsef_protocol.v1 import segmenter_pb2 as pb

__all__ = [
    "TensorError",
    "SUPPORTED_DTYPES",
    "VALID_AXES_LETTERS",
    "to_tensor",
    "from_tensor",
    "check_axes",
    "tensor_nbytes",
]

_TO_ENUM: dict[str, int] = {
    "bool": pb.BOOL,
    "uint8": pb.UINT8,
    "uint16": pb.UINT16,
    "uint32": pb.UINT32,
    "uint64": pb.UINT64,
    "int8": pb.INT8,
    "int16": pb.INT16,
    "int32": pb.INT32,
    "int64": pb.INT64,
    "float16": pb.FLOAT16,
    "float32": pb.FLOAT32,
    "float64": pb.FLOAT64,
}
_FROM_ENUM: dict[int, np.dtype] = {v: np.dtype(k).newbyteorder("<") for k, v in _TO_ENUM.items()}

#: dtype names the codec can carry.
SUPPORTED_DTYPES: tuple[str, ...] = tuple(_TO_ENUM)
#: Letters allowed in an axes string.
VALID_AXES_LETTERS = "TZYXC"


class TensorError(ValueError):
    """A tensor or array that cannot be encoded or decoded (bad dtype, shape, axes or bytes)."""


def check_axes(axes: str, ndim: int) -> str:
    """Validate an axes string against an array's number of dimensions.

    Parameters
    ----------
    axes : str
        One letter per axis from ``TZYXC``, each at most once, containing Y and X.
    ndim : int
        Number of dimensions of the array.

    Returns
    -------
    str
        The axes string in upper case.

    Raises
    ------
    TensorError
        Naming what is wrong with ``axes``.

    Examples
    --------
    >>> check_axes("zyx", 3)
    'ZYX'
    """
    if not isinstance(axes, str) or not axes:
        raise TensorError(f"axes must be a non-empty string like 'YX', got {axes!r}")
    up = axes.upper()
    bad = sorted(set(up) - set(VALID_AXES_LETTERS))
    if bad:
        raise TensorError(f"axes {axes!r} has unknown letter(s) {bad}; allowed: {VALID_AXES_LETTERS}")
    if len(set(up)) != len(up):
        raise TensorError(f"axes {axes!r} repeats a letter")
    if len(up) != ndim:
        raise TensorError(f"axes {axes!r} has {len(up)} letters but the array has {ndim} dimensions")
    if "Y" not in up or "X" not in up:
        raise TensorError(f"axes {axes!r} must contain Y and X")
    return up


def to_tensor(array: np.ndarray, axes: str) -> pb.Tensor:
    """Encode a numpy array as a ``Tensor`` message.

    Parameters
    ----------
    array : ndarray
        Any array of a dtype in :data:`SUPPORTED_DTYPES`.
    axes : str
        Axes string, one letter per dimension (see :func:`check_axes`).

    Returns
    -------
    Tensor
        The message; ``data`` is little-endian C-order bytes.
    """
    array = np.asarray(array)
    name = array.dtype.name
    if name not in _TO_ENUM:
        raise TensorError(f"dtype {array.dtype} is not supported; use one of {', '.join(SUPPORTED_DTYPES)}")
    axes = check_axes(axes, array.ndim)
    le = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return pb.Tensor(
        dtype=_TO_ENUM[name],
        shape=list(array.shape),
        axes=axes,
        data=np.ascontiguousarray(le).tobytes(),
    )


def tensor_nbytes(tensor: pb.Tensor) -> int:
    """Bytes the tensor's shape and dtype call for (``prod(shape) * itemsize``)."""
    if tensor.dtype not in _FROM_ENUM:
        raise TensorError(f"tensor dtype {tensor.dtype} is unknown (DTYPE_UNSPECIFIED or newer than this codec)")
    # Python integers: a hostile shape such as [2**32, 2**32] must not wrap around to 0 bytes.
    return math.prod(int(s) for s in tensor.shape) * _FROM_ENUM[tensor.dtype].itemsize


def from_tensor(tensor: pb.Tensor, *, copy: bool = False) -> tuple[np.ndarray, str]:
    """Decode a ``Tensor`` message into ``(array, axes)``.

    The array is a read-only view of the message bytes unless ``copy`` is true.

    Raises
    ------
    TensorError
        If dtype is unknown, a dimension is negative, the axes do not match the
        shape, or the byte count does not equal ``prod(shape) * itemsize``.
    """
    if tensor.dtype not in _FROM_ENUM:
        raise TensorError(f"tensor dtype {tensor.dtype} is unknown (DTYPE_UNSPECIFIED or newer than this codec)")
    shape = tuple(int(s) for s in tensor.shape)
    if any(s < 0 for s in shape):
        raise TensorError(f"tensor shape {shape} has a negative dimension")
    axes = check_axes(tensor.axes, len(shape))
    expected = tensor_nbytes(tensor)
    if len(tensor.data) != expected:
        raise TensorError(
            f"tensor data has {len(tensor.data)} bytes but shape {shape} x {_FROM_ENUM[tensor.dtype].name} needs {expected}"
        )
    array = np.frombuffer(tensor.data, dtype=_FROM_ENUM[tensor.dtype]).reshape(shape)
    array = array.astype(array.dtype.newbyteorder("="), copy=copy)
    return array, axes
