"""Preprocessing operations: tiny literal arrays, invariants (shape, dtype, range, idempotence), real images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from opsef_orchestrator import preprocess as pp
from opsef_orchestrator.io import read_image
from tests.utils import blob_image

SAME_DTYPE = ["none", "median", "mean", "gaussian", "subtract_constant", "rolling_ball", "white_tophat", "invert"]
PARAMS = {"subtract_constant": {"value": 10}, "rolling_ball": {"radius": 5}, "white_tophat": {"radius": 3},
          "clahe": {"tile_grid": 2}, "to_dtype": {"dtype": "uint8"}}


@pytest.mark.parametrize("name", sorted(pp.OPERATIONS))
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_shape_and_dtype_invariants(name, dtype):
    op = pp.OPERATIONS[name]
    img = blob_image((24, 30), dtype=dtype)
    if np.dtype(dtype).kind == "f":
        img = img / 255.0
    out = op.function(img, **PARAMS.get(name, {}))
    assert out.shape == img.shape
    if op.output_dtype == "same":
        assert out.dtype == img.dtype
    elif op.output_dtype == "float32":
        assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert img is not out


@pytest.mark.parametrize("name", [n for n, o in pp.OPERATIONS.items() if o.supports_volume])
def test_volume_support(name):
    img = blob_image((6, 20, 22), radius=2.0)
    out = pp.OPERATIONS[name].function(img, **PARAMS.get(name, {}))
    assert out.shape == img.shape


def test_roberts_is_2d_only():
    with pytest.raises(ValueError, match="roberts: image must have 2 dimensions"):
        pp.roberts(np.zeros((3, 4, 4)))


def test_median_literal_and_idempotent_on_constant():
    a = np.array([[1, 1, 1], [1, 9, 1], [1, 1, 1]], np.uint8)
    np.testing.assert_array_equal(pp.median(a, 3), np.ones((3, 3), np.uint8))
    const = np.full((5, 5), 7, np.uint16)
    np.testing.assert_array_equal(pp.median(const, 5), const)
    for bad in (2, 0, -3, 3.0, True):
        with pytest.raises(ValueError, match="median: size"):
            pp.median(a, bad)


def test_mean_and_gaussian_preserve_mean_and_constants():
    img = blob_image((32, 32))
    assert abs(float(pp.mean(img, 2).mean()) - float(img.mean())) < 1.0
    assert abs(float(pp.gaussian(img.astype(np.float32), 2).mean()) - float(img.mean())) < 0.5
    const = np.full((6, 6), 100, np.uint8)
    np.testing.assert_array_equal(pp.gaussian(const, 3), const)
    np.testing.assert_array_equal(pp.mean(const, 2), const)
    with pytest.raises(ValueError, match="gaussian: sigma"):
        pp.gaussian(const, -1)
    with pytest.raises(ValueError, match="mean: radius"):
        pp.mean(const, 0)


def test_no_wraparound():
    a = np.array([[0, 5, 250]], np.uint8)
    np.testing.assert_array_equal(pp.subtract_constant(a, 10), [[0, 0, 240]])
    np.testing.assert_array_equal(pp.subtract_constant(a, -10), [[10, 15, 255]])
    big = np.array([[0, 255, 255]], np.uint8)
    assert pp.gaussian(big, 0.5).max() <= 255


def test_background_removal_flattens_background():
    yy, xx = np.mgrid[:64, :64]
    bg = (20 + 0.5 * xx + 0.3 * yy).astype(np.float32)
    img = bg.copy()
    img[30:34, 30:34] += 200
    for out in (pp.rolling_ball(img, radius=8), pp.white_tophat(img, radius=5)):
        assert out[32, 32] > 150
        assert np.median(out) < 5
    # shrinking gives nearly the same result as the exact rolling ball
    exact = pp.rolling_ball(img, radius=20, shrink=1)
    fast = pp.rolling_ball(img, radius=20)
    assert np.abs(exact - fast)[8:-8, 8:-8].max() < 10


def test_white_tophat_idempotent():
    img = blob_image((40, 40))
    once = pp.white_tophat(img, 4)
    np.testing.assert_array_equal(pp.white_tophat(once, 4), once)


def test_clahe_range_and_params():
    img = blob_image((48, 48), dtype=np.uint16)
    out = pp.clahe(img, tile_grid=(4, 6), clip_limit=0.03)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    assert pp.clahe(np.full((8, 8), 3, np.uint8)).max() == 0  # flat image stays flat
    with pytest.raises(ValueError, match="clahe: clip_limit"):
        pp.clahe(img, clip_limit=0)
    with pytest.raises(ValueError, match="clahe: tile_grid"):
        pp.clahe(img, tile_grid=(2, 2, 2))


def test_edges():
    step = np.zeros((8, 8), np.uint8)
    step[:, 4:] = 100
    for fn in (pp.sobel, pp.roberts):
        e = fn(step)
        assert e.dtype == np.float32 and e[:, 0].max() == 0 and e[:, 3:5].max() > 0


def test_invert_is_an_involution():
    img = blob_image((16, 16))
    np.testing.assert_array_equal(pp.invert(pp.invert(img)), img)
    np.testing.assert_array_equal(pp.invert(pp.invert(img, "dtype"), "dtype"), img)
    np.testing.assert_array_equal(pp.invert(np.array([[-5, 5]], np.int16)), [[5, -5]])
    np.testing.assert_allclose(pp.invert(np.array([[0.25, 1.0]], np.float32), "dtype"), [[0.75, 0.0]])
    with pytest.raises(ValueError, match="invert: reference"):
        pp.invert(img, "nope")


def test_normalize_percentile():
    a = np.arange(1000, dtype=np.uint16).reshape(10, 100)
    n = pp.normalize_percentile(a, 1, 99, clip=True)
    assert n.dtype == np.float32 and n.min() == 0 and n.max() == 1
    flat = pp.normalize_percentile(np.full((4, 4), 9, np.uint8))
    assert np.isfinite(flat).all() and flat.max() == 0
    with pytest.raises(ValueError, match="low < high"):
        pp.normalize_percentile(a, 50, 10)


def test_to_dtype_without_overflow():
    s = np.array([[0, 1000, 70000]], np.uint32)  # e.g. a sum projection of uint16 planes
    np.testing.assert_array_equal(pp.to_dtype(s, "uint8"), [[0, 4, 255]])
    np.testing.assert_array_equal(pp.to_dtype(s, "uint16", in_range=(0, 1000)), [[0, 65535, 65535]])
    np.testing.assert_array_equal(pp.to_dtype(np.array([[0, 255]], np.uint8), "uint8", "dtype"), [[0, 255]])
    f = pp.to_dtype(s, "float32")
    assert f.dtype == np.float32 and f.max() == 1.0
    with pytest.raises(ValueError, match="to_dtype: dtype"):
        pp.to_dtype(s, "int8")
    with pytest.raises(ValueError, match="to_dtype: in_range"):
        pp.to_dtype(s, "uint8", in_range=(5, 1))


def test_restore_dtype_rounds_and_clips():
    np.testing.assert_array_equal(pp.restore_dtype(np.array([-1.0, 1.5, 70000.0]), np.uint16), [0, 2, 65535])
    np.testing.assert_array_equal(pp.restore_dtype(np.array([0.2, 0.8]), bool), [False, True])


@pytest.mark.parametrize("name", ["median", "gaussian", "clahe", "white_tophat", "rolling_ball", "normalize"])
def test_real_image(shared_data: Path, name):
    img = read_image(shared_data / "fluo3d" / "cho_t00_img.tif", z=2).data
    out = pp.OPERATIONS[name].function(img, **PARAMS.get(name, {}))
    assert out.shape == img.shape and np.isfinite(out).all()
    if name in ("median", "gaussian"):
        # smoothing reduces noise but keeps the nuclei: correlation with the input stays high
        assert np.corrcoef(out.ravel().astype(float), img.ravel().astype(float))[0, 1] > 0.9
        assert float(np.std(np.diff(out.astype(float), axis=1))) < float(np.std(np.diff(img.astype(float), axis=1)))
