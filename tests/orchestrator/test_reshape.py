"""Reshape: scale, bin, sub-stacks, z projections, channels, RGB to grey, colour deconvolution."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from opsef_orchestrator import reshape as rs
from opsef_orchestrator.io import read_image
from tests.utils import blob_image


def test_rescale_shapes_dtype_and_axes():
    img = blob_image((40, 60))
    out, ax = rs.rescale(img, "YX", 0.5)
    assert out.shape == (20, 30) and out.dtype == np.uint8 and ax == "YX"
    out, ax = rs.rescale(np.zeros((2, 5, 10, 12, 3), np.uint16), "TZYXC", (2, 0.5, 0.5))
    assert out.shape == (2, 10, 5, 6, 3) and ax == "TZYXC"
    assert rs.rescale(img, "YX", 1.0)[0] is not img
    with pytest.raises(ValueError, match="rescale: factor"):
        rs.rescale(img, "YX", (1, 2, 3))
    with pytest.raises(ValueError, match="rescale: factor must be > 0"):
        rs.rescale(img, "YX", 0)


def test_rescale_anti_aliasing_and_labels():
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    smooth, _ = rs.rescale(checker, "YX", 0.25)
    assert smooth.std() < 20  # anti-aliased: the checkerboard averages to grey
    lab = np.zeros((10, 10), np.uint16)
    lab[2:6, 2:6] = 7
    up, _ = rs.rescale(lab, "YX", 2, order=0)
    assert set(np.unique(up)) == {0, 7} and (up == 7).sum() == 64


def test_bin_image():
    a = np.arange(16, dtype=np.uint8).reshape(4, 4)
    m, _ = rs.bin_image(a, "YX", 2)
    np.testing.assert_allclose(m, [[2.5, 4.5], [10.5, 12.5]])
    assert m.dtype == np.float32
    mx, _ = rs.bin_image(a, "YX", 2, "max")
    np.testing.assert_array_equal(mx, [[5, 7], [13, 15]])
    s, _ = rs.bin_image(np.full((4, 6, 3), 255, np.uint8), "YXC", 2, "sum")
    assert s.shape == (2, 3, 3) and s.dtype == np.uint16 and s.max() == 1020
    z, _ = rs.bin_image(np.ones((4, 4, 4), np.uint8), "ZYX", (2, 2, 2), "sum")
    assert z.shape == (2, 2, 2) and z.max() == 8
    with pytest.raises(ValueError, match="bin_image: factor"):
        rs.bin_image(a, "YX", 1.5)
    with pytest.raises(ValueError, match="larger than the image"):
        rs.bin_image(a, "YX", 5)


def test_substacks_keep_the_last_planes():
    for n in range(1, 30):
        for size in (1, 3, 5):
            for step in (None, 1, 2, 4):
                r = rs.substack_ranges(n, size, step)
                assert r[0][0] == 0 and r[-1][1] == n
                covered = np.zeros(n, bool)
                for a, b in r:
                    covered[a:b] = True
                    assert b - a == min(size, n)
                if (step or size) <= size:
                    assert covered.all()
    parts = rs.substacks(np.arange(10)[:, None, None] * np.ones((10, 2, 2)), "ZYX", 4)
    assert [int(p[0][0, 0, 0]) for p in parts] == [0, 4, 6]


def test_select_z():
    a = np.arange(10)[:, None, None] * np.ones((1, 2, 2), np.uint8)
    out, ax = rs.select_z(a, "ZYX", 2, 9, 3)
    assert [int(v) for v in out[:, 0, 0]] == [2, 5, 8] and ax == "ZYX"
    with pytest.raises(ValueError, match="no Z axis"):
        rs.select_z(a[0], "YX")
    with pytest.raises(ValueError, match="select no plane"):
        rs.select_z(a, "ZYX", 20)


def test_z_project_no_uint8_overflow():
    a = np.full((5, 3, 3), 250, np.uint8)
    for method, value, dtype in [("max", 250, np.uint8), ("sum", 1250, np.uint16), ("mean", 250, np.float32),
                                 ("median", 250, np.float32), ("min", 250, np.uint8)]:
        out, ax = rs.z_project(a, "ZYX", method)
        assert ax == "YX" and out.dtype == dtype and float(out[0, 0]) == value
    big = np.full((2000, 2, 2), 65535, np.uint16)
    assert int(rs.z_project(big, "ZYX", "sum")[0][0, 0]) == 2000 * 65535
    med, _ = rs.z_project(np.array([1, 2], np.uint8)[:, None, None] * np.ones((2, 1, 1), np.uint8), "ZYX", "median")
    assert float(med[0, 0]) == 1.5


def test_z_project_window_and_channels():
    a = np.arange(10, dtype=np.uint8)[None, :, None, None, None] * np.ones((2, 10, 3, 3, 2), np.uint8)
    out, ax = rs.z_project(a, "TZYXC", "max", window=4)
    assert ax == "TZYXC" and out.shape == (2, 3, 3, 3, 2)
    assert [int(v) for v in out[0, :, 0, 0, 0]] == [3, 7, 9]
    out, _ = rs.z_project(a, "TZYXC", "sum", window=3, step=3)
    assert [int(v) for v in out[0, :, 0, 0, 0]] == [3, 12, 21, 24]
    with pytest.raises(ValueError, match="z_project: method"):
        rs.z_project(a, "TZYXC", "mode")


def test_select_channels():
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    out, ax = rs.select_channels(a, "YXC", [3, 1])
    np.testing.assert_array_equal(out[..., 0], a[..., 3])
    assert ax == "YXC"
    with pytest.raises(ValueError, match="channel 4 does not exist"):
        rs.select_channels(a, "YXC", 4)
    with pytest.raises(ValueError, match="no C axis"):
        rs.select_channels(a[..., 0], "YX", 0)


def test_rgb_to_grey():
    rgb = np.zeros((2, 2, 4), np.uint8)
    rgb[..., 1] = 200
    g, ax = rs.rgb_to_grey(rgb, "YXC")
    assert ax == "YX" and g.dtype == np.float32
    np.testing.assert_allclose(g, 0.7154 * 200, rtol=1e-6)
    with pytest.raises(ValueError, match="RGB"):
        rs.rgb_to_grey(np.zeros((2, 2, 2)), "YXC")


def test_color_deconvolution_synthetic():
    # pure haematoxylin / eosin colours from the Ruifrok matrix
    from skimage.color import hed2rgb

    hed = np.zeros((2, 1, 3))
    hed[0, 0, 0] = 1.0   # haematoxylin
    hed[1, 0, 1] = 1.0   # eosin
    rgb = hed2rgb(hed)
    h, _ = rs.color_deconvolution(rgb, "YXC", "haematoxylin")
    e, _ = rs.color_deconvolution(rgb, "YXC", "eosin")
    assert h[0, 0] > 5 * h[1, 0] and e[1, 0] > 5 * e[0, 0]
    all3, ax = rs.color_deconvolution(rgb, "YXC", "all")
    assert all3.shape == (2, 1, 3) and ax == "YXC"
    with pytest.raises(ValueError, match="stain"):
        rs.color_deconvolution(rgb, "YXC", "dapi")


def test_color_deconvolution_real_he(shared_data: Path):
    he_file = sorted((shared_data / "imagej_roi").glob("*/*.tif"))[0]
    img = read_image(he_file)
    h, ax = rs.color_deconvolution(img.data, img.axes, "haematoxylin")
    e, _ = rs.color_deconvolution(img.data, img.axes, "eosin")
    assert ax == "YX" and h.shape == (512, 512) and (h >= 0).all()
    # nuclei are haematoxylin-dense: dark pixels in grey have more H than bright ones
    grey, _ = rs.rgb_to_grey(img.data, img.axes)
    dark = grey < np.percentile(grey, 10)
    bright = grey > np.percentile(grey, 90)
    assert h[dark].mean() > 2 * h[bright].mean()
    assert not np.allclose(h, e)


def test_real_3d_projection(shared_data: Path):
    img = read_image(shared_data / "fluo3d" / "cho_t00_img.tif")
    s, ax = rs.z_project(img.data, img.axes, "sum")
    assert ax == "YX" and s.dtype == np.uint16
    np.testing.assert_array_equal(s, img.data.astype(np.int64).sum(0))
    m, _ = rs.z_project(img.data, img.axes, "max", window=2)
    assert m.shape == (3, 443, 512)
