"""Codec: every dtype and axes string round-trips; bad tensors are rejected naming the problem."""
from __future__ import annotations

import numpy as np
import pytest

from opsef_protocol.codec import SUPPORTED_DTYPES, TensorError, check_axes, from_tensor, to_tensor
from opsef_protocol.v1 import segmenter_pb2 as pb


@pytest.mark.parametrize("dtype", SUPPORTED_DTYPES)
@pytest.mark.parametrize("axes,shape", [("YX", (3, 4)), ("YXC", (3, 4, 2)), ("ZYX", (2, 3, 4)), ("ZYXC", (2, 3, 4, 3))])
def test_round_trip_all_dtypes_and_axes(dtype: str, axes: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    a = (rng.random(shape) * 100).astype(dtype)
    b, got_axes = from_tensor(to_tensor(a, axes))
    assert got_axes == axes
    assert b.dtype == a.dtype and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


def test_big_endian_input_is_sent_little_endian() -> None:
    a = np.arange(6, dtype=">u2").reshape(2, 3)
    t = to_tensor(a, "YX")
    assert t.data == np.arange(6, dtype="<u2").tobytes()
    np.testing.assert_array_equal(from_tensor(t)[0], a)


def test_non_contiguous_and_uint32_extremes() -> None:
    a = np.array([[0, 2**32 - 1], [70000, 1]], np.uint32).T
    np.testing.assert_array_equal(from_tensor(to_tensor(a, "YX"))[0], a)


def test_decoded_view_is_read_only_unless_copied() -> None:
    t = to_tensor(np.zeros((2, 2), np.uint8), "YX")
    assert not from_tensor(t)[0].flags.writeable
    assert from_tensor(t, copy=True)[0].flags.writeable


@pytest.mark.parametrize(
    "tensor,message",
    [
        (pb.Tensor(dtype=pb.UINT8, shape=[2, 2], axes="YX", data=b"\0" * 3), "needs 4"),
        (pb.Tensor(dtype=pb.DTYPE_UNSPECIFIED, shape=[1, 1], axes="YX", data=b"\0"), "unknown"),
        (pb.Tensor(dtype=pb.UINT8, shape=[2, 2], axes="YXZ", data=b"\0" * 4), "3 letters"),
        (pb.Tensor(dtype=pb.UINT8, shape=[4], axes="Y", data=b"\0" * 4), "must contain Y and X"),
        (pb.Tensor(dtype=pb.UINT8, shape=[2, 2], axes="YQ", data=b"\0" * 4), "unknown letter"),
        (pb.Tensor(dtype=pb.UINT8, shape=[2, 2], axes="YY", data=b"\0" * 4), "repeats"),
        (pb.Tensor(dtype=pb.UINT8, shape=[-1, 2], axes="YX", data=b""), "negative"),
    ],
)
def test_bad_tensors(tensor: pb.Tensor, message: str) -> None:
    with pytest.raises(TensorError, match=message):
        from_tensor(tensor)


def test_unsupported_dtype_named() -> None:
    with pytest.raises(TensorError, match="complex128"):
        to_tensor(np.zeros((2, 2), complex), "YX")


def test_check_axes_upper_cases() -> None:
    assert check_axes("zyxc", 4) == "ZYXC"
