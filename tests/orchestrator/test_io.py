"""Import: TIFF / OME / ImageJ / PNG / JPEG / LIF readers, axes, selection, folders, writers, bad input."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from opsef_orchestrator.io import (
    Image,
    ImageReadError,
    inspect_image,
    list_images,
    normalize_axes,
    read_image,
    read_region,
    select_axes,
    write_image,
    write_labels,
)
from tests.utils import blob_image

# ------------------------------------------------------------------ axes


@pytest.mark.parametrize("axes, shape, expected_axes, expected_shape", [
    ("YX", (4, 5), "YX", (4, 5)),
    ("CYX", (3, 4, 5), "YXC", (4, 5, 3)),
    ("YXS", (4, 5, 3), "YXC", (4, 5, 3)),
    ("ZCYX", (2, 3, 4, 5), "ZYXC", (2, 4, 5, 3)),
    ("TCZYX", (2, 3, 6, 4, 5), "TZYXC", (2, 6, 4, 5, 3)),
    ("QYX", (6, 4, 5), "ZYX", (6, 4, 5)),
    ("IQYX", (1, 6, 4, 5), "ZYX", (6, 4, 5)),
])
def test_normalize_axes(axes, shape, expected_axes, expected_shape):
    data = np.arange(int(np.prod(shape))).reshape(shape)
    out, ax = normalize_axes(data, axes)
    assert ax == expected_axes and out.shape == expected_shape
    # values follow the axes
    if axes == "CYX":
        assert out[1, 2, 0] == data[0, 1, 2]


@pytest.mark.parametrize("axes, problem", [("QIYX", "cannot tell"), ("ZZX", "repeat"), ("ZCX", "Y and X"),
                                           ("CSYX", "both channel")])
def test_normalize_axes_errors(axes, problem):
    with pytest.raises(ImageReadError, match=problem):
        normalize_axes(np.zeros((2, 3, 4, 5)[: len(axes)]), axes, "f.tif")


def test_select_axes_errors_name_the_problem():
    data = np.zeros((3, 4, 5, 2))
    with pytest.raises(ImageReadError, match=r"^f\.tif: channel 2 does not exist"):
        select_axes(data, "ZYXC", channel=2, path="f.tif")
    with pytest.raises(ImageReadError, match="no time point axis"):
        select_axes(data, "ZYXC", time=0, path="f.tif")
    with pytest.raises(ImageReadError, match="selects no plane"):
        select_axes(data, "ZYXC", z=(5, 9), path="f.tif")
    out, ax = select_axes(data, "ZYXC", channel=[1, 0], z=slice(0, 3, 2))
    assert out.shape == (2, 4, 5, 2) and ax == "ZYXC"


def test_image_dataclass_checks_axes():
    with pytest.raises(ValueError, match="subsequence"):
        Image(np.zeros((2, 3)), "XY")
    with pytest.raises(ValueError, match="do not match"):
        Image(np.zeros((2, 3)), "ZYX")


# ------------------------------------------------------------------ TIFF flavours


def test_imagej_hyperstack_roundtrip(tmp_path):
    data = np.random.default_rng(0).integers(0, 4000, (2, 3, 2, 16, 20)).astype(np.uint16)  # TZCYX
    f = tmp_path / "hyper.tif"
    tifffile.imwrite(f, data, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"axes": "TZCYX", "spacing": 1.5, "unit": "um"})
    img = read_image(f)
    assert img.axes == "TZYXC" and img.shape == (2, 3, 16, 20, 2)
    assert img.pixel_size == pytest.approx((1.5, 0.25, 0.25))
    np.testing.assert_array_equal(img.data[1, 2, :, :, 1], data[1, 2, 1])
    sel = read_image(f, time=1, channel=0, z=(0, 3, 2))
    assert sel.axes == "ZYX" and sel.shape == (2, 16, 20)
    np.testing.assert_array_equal(sel.data[1], data[1, 2, 0])
    assert read_image(f, channel=[1]).axes == "TZYXC"


def test_ome_tiff_pixel_size_and_series_name(tmp_path):
    f = tmp_path / "a.ome.tif"
    data = np.zeros((4, 2, 8, 9), np.uint8)
    tifffile.imwrite(f, data, ome=True, metadata={"axes": "ZCYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3,
                                                  "PhysicalSizeZ": 2.0, "PhysicalSizeXUnit": "nm",
                                                  "Name": "stack"})
    img = read_image(f, series="stack")
    assert img.axes == "ZYXC" and img.series == "stack"
    assert img.pixel_size == pytest.approx((2.0, 0.3, 3e-4))
    with pytest.raises(ImageReadError, match=r"series 'nope' does not exist"):
        read_image(f, series="nope")
    with pytest.raises(ImageReadError, match="series 3 does not exist"):
        read_image(f, series=3)


def test_plain_tiff_axes_override(tmp_path):
    f = tmp_path / "plain.tif"
    data = np.arange(2 * 3 * 5 * 6, dtype=np.uint16).reshape(2, 3, 5, 6)
    tifffile.imwrite(f, data, photometric="minisblack", metadata={"axes": "QQYX"})
    with pytest.raises(ImageReadError, match="cannot tell"):
        read_image(f)
    img = read_image(f, axes="CZYX")
    assert img.axes == "ZYXC" and img.shape == (3, 5, 6, 2)
    with pytest.raises(ImageReadError, match=r"^.*plain\.tif: axes 'ZYX' has 3 letters but the image has 4"):
        read_image(f, axes="ZYX")
    with pytest.raises(ImageReadError, match="unknown letter"):
        read_image(f, axes="ABYX")


def test_rgb_tiff_and_cm_resolution(tmp_path):
    f = tmp_path / "rgb.tif"
    data = np.random.default_rng(1).integers(0, 255, (10, 12, 3)).astype(np.uint8)
    tifffile.imwrite(f, data, photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    img = read_image(f)
    assert img.axes == "YXC" and img.pixel_size == pytest.approx((None, 0.5, 0.5))
    np.testing.assert_array_equal(img.data, data)


def test_png_jpeg(tmp_path):
    import imageio.v3 as iio

    grey = blob_image((20, 30))
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    iio.imwrite(tmp_path / "g.png", grey)
    iio.imwrite(tmp_path / "c.png", rgba)
    iio.imwrite(tmp_path / "c.jpg", rgba[..., :3])
    g = read_image(tmp_path / "g.png")
    assert g.axes == "YX" and g.pixel_size is None
    np.testing.assert_array_equal(g.data, grey)
    c = read_image(tmp_path / "c.png")
    assert c.axes == "YXC" and c.shape == (20, 30, 3) and c.metadata["dropped_alpha"]
    assert read_image(tmp_path / "c.png", channel=1).axes == "YX"
    j = read_image(tmp_path / "c.jpg")
    assert j.shape == (20, 30, 3) and j.dtype == np.uint8
    with pytest.raises(ImageReadError, match="PNG/JPEG files hold one image"):
        read_image(tmp_path / "g.png", series=1)


# ------------------------------------------------------------------ bad input


def test_bad_files(tmp_path):
    missing = tmp_path / "missing.tif"
    with pytest.raises(ImageReadError, match=r"missing\.tif: file does not exist"):
        read_image(missing)
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="0 bytes"):
        read_image(empty)
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"this is not a tiff" * 10)
    with pytest.raises(ImageReadError, match=r"^.*junk\.tif: cannot read TIFF"):
        read_image(junk)
    junk_png = tmp_path / "junk.png"
    junk_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 5)
    with pytest.raises(ImageReadError, match=r"junk\.png: cannot read PNG"):
        read_image(junk_png)
    with pytest.raises(ImageReadError, match="unsupported file type"):
        read_image(tmp_path / "notes.txt")
    with pytest.raises(ImageReadError, match="is a folder"):
        read_image(tmp_path / "d.tif") if (tmp_path / "d.tif").mkdir() is None else None


def test_truncated_tiff(tmp_path):
    f = tmp_path / "full.tif"
    tifffile.imwrite(f, blob_image((64, 64)), compression="zlib")
    cut = tmp_path / "cut.tif"
    raw = f.read_bytes()
    cut.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ImageReadError, match=r"^.*cut\.tif: "):
        read_image(cut)


def test_nan_and_empty(tmp_path):
    f = tmp_path / "nan.tif"
    data = np.ones((4, 4), np.float32)
    data[1, 1] = np.nan
    tifffile.imwrite(f, data)
    with pytest.raises(ImageReadError, match=r"nan\.tif: image contains NaN"):
        read_image(f)
    assert np.isnan(read_image(f, check_nan=False).data).sum() == 1
    e = tmp_path / "zero.tif"
    with pytest.warns(UserWarning, match="zero-size"):
        tifffile.imwrite(e, np.zeros((0, 4), np.uint8))
    with pytest.raises(ImageReadError, match=r"zero\.tif: image is empty"):
        read_image(e)


def test_image_read_error_is_value_error():
    assert issubclass(ImageReadError, ValueError)
    err = ImageReadError("a/b.tif", "boom")
    assert str(err) == "a/b.tif: boom" and err.path == "a/b.tif" and err.problem == "boom"


# ------------------------------------------------------------------ large images


def test_memmap_and_region_uncompressed(tmp_path):
    f = tmp_path / "big.tif"
    data = np.arange(3 * 40 * 50, dtype=np.uint16).reshape(3, 40, 50)
    tifffile.imwrite(f, data, imagej=True, metadata={"axes": "ZYX"})
    img = read_image(f, memmap=True)
    assert isinstance(img.data, np.memmap) and img.axes == "ZYX"
    np.testing.assert_array_equal(img.data, data)
    region = read_region(f, (slice(5, 20), slice(10, 45)), z=1)
    np.testing.assert_array_equal(region.data, data[1, 5:20, 10:45])


@pytest.mark.parametrize("kwargs", [{"tile": (16, 16), "compression": "zlib"},
                                    {"rowsperstrip": 7, "compression": "zlib"},
                                    {"tile": (16, 32), "photometric": "rgb"}])
def test_region_decodes_only_needed_segments(tmp_path, kwargs):
    f = tmp_path / "tiled.tif"
    rng = np.random.default_rng(0)
    shape = (70, 90, 3) if kwargs.get("photometric") == "rgb" else (70, 90)
    data = rng.integers(0, 60000, shape).astype(np.uint16)
    tifffile.imwrite(f, data, **kwargs)
    r = read_region(f, (slice(13, 61), slice(30, 89)))
    np.testing.assert_array_equal(r.data, data[13:61, 30:89])
    assert r.axes == ("YXC" if data.ndim == 3 else "YX")


def test_memmap_compressed_falls_back_to_tempfile(tmp_path):
    f = tmp_path / "c.tif"
    data = blob_image((3, 32, 32), radius=1.0)
    tifffile.imwrite(f, data, imagej=True, metadata={"axes": "ZYX"}, compression="zlib")
    img = read_image(f, memmap=True)
    np.testing.assert_array_equal(np.asarray(img.data), data)


# ------------------------------------------------------------------ inspect, folders, writers


def test_inspect_image(tmp_path):
    f = tmp_path / "a.tif"
    tifffile.imwrite(f, np.zeros((2, 3, 8, 9), np.uint8), imagej=True, metadata={"axes": "ZCYX"})
    info = inspect_image(f)
    s = info["series"][0]
    assert info["format"] == "imagej-tiff"
    assert (s["axes"], s["shape"], s["dtype"], s["source_axes"]) == ("ZYXC", (2, 8, 9, 3), "uint8", "ZCYX")
    plain = tmp_path / "p.tif"
    tifffile.imwrite(plain, np.zeros((2, 3, 8, 9), np.uint8), photometric="minisblack", metadata={"axes": "QQYX"})
    assert inspect_image(plain)["series"][0]["problem"].startswith("cannot tell")


def test_list_images(tmp_path):
    for rel in ["kidney/tile_001.tif", "kidney/tile_002.tif", "kidney/overview.png", "liver/tile_001.tif",
                "notes.txt", ".hidden.tif", "x.TIF"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["x.TIF"]
    rel = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)]
    assert rel == ["kidney/overview.png", "kidney/tile_001.tif", "kidney/tile_002.tif", "liver/tile_001.tif", "x.TIF"]
    got = list_images(tmp_path, include=["tile_*"], exclude="liver", recursive=True)
    assert [p.relative_to(tmp_path).as_posix() for p in got] == ["kidney/tile_001.tif", "kidney/tile_002.tif"]
    with pytest.raises(ValueError, match="not a folder"):
        list_images(tmp_path / "nope")


def test_write_image_atomic_and_roundtrip(tmp_path):
    f = tmp_path / "sub" / "out.tif"
    data = np.random.default_rng(0).random((2, 3, 10, 11, 2)).astype(np.float32)
    write_image(f, data, "TZYXC", pixel_size=(1.0, 0.2, 0.2))
    img = read_image(f)
    assert img.axes == "TZYXC" and img.pixel_size == pytest.approx((1.0, 0.2, 0.2))
    np.testing.assert_array_equal(img.data, data)
    assert sorted(os.listdir(f.parent)) == ["out.tif"]
    # float64 and RGB uint8 go through plain TIFF
    write_image(tmp_path / "d.tif", data[0, 0, ..., 0].astype(np.float64), "YX")
    assert read_image(tmp_path / "d.tif").dtype == np.float64
    rgb = np.random.default_rng(0).integers(0, 255, (6, 7, 3)).astype(np.uint8)
    write_image(tmp_path / "rgb.tif", rgb, "YXC")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.tif").data, rgb)
    write_image(tmp_path / "rgb.png", rgb, "YXC")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png").data, rgb)
    with pytest.raises(ValueError, match="PNG/JPEG hold 2D"):
        write_image(tmp_path / "bad.png", data[0, 0], "YXC")
    with pytest.raises(ValueError, match="subsequence"):
        write_image(tmp_path / "bad.tif", data[0, 0], "XYC")


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import tifffile as tf

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(tf, "imwrite", boom)
    with pytest.raises(OSError, match="disk full"):
        write_image(tmp_path / "x.tif", np.zeros((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_write_labels(tmp_path):
    lab = np.zeros((5, 5), np.int64)
    lab[1:3, 1:3] = 5
    write_labels(tmp_path / "l.tif", lab)
    assert read_image(tmp_path / "l.tif").dtype == np.uint16
    with pytest.raises(ValueError, match="integers"):
        write_labels(tmp_path / "f.tif", lab.astype(float))
    lab3 = np.zeros((2, 6, 3), np.uint32)  # X of 3 must not be taken for RGB
    lab3[1, 2, 1] = 70000
    write_labels(tmp_path / "z.tif", lab3)
    back = read_image(tmp_path / "z.tif")
    assert back.axes == "ZYX" and back.dtype == np.uint32 and int(back.data[1, 2, 1]) == 70000


def _small_blocks(monkeypatch, block_bytes: int = 4096) -> None:
    """Many blocks and strips per plane, so the streaming writer's block joins are exercised on small images."""
    import opsef_orchestrator.io.writers as writers

    monkeypatch.setattr(writers, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(writers, "STRIP_BYTES", 512)


@pytest.mark.parametrize("shape, top, dtype", [
    ((97, 131), 65535, np.uint16),      # the largest uint16 label stays uint16
    ((97, 131), 65536, np.uint32),      # one more needs uint32
    ((3, 41, 29), 70000, np.uint32),
    ((2, 3, 17, 23), 900, np.uint16),
    ((1, 1), 0, np.uint16),
])
def test_streamed_labels_equal_the_array(tmp_path, monkeypatch, shape, top, dtype):
    _small_blocks(monkeypatch)
    rng = np.random.default_rng(top)
    lab = rng.integers(0, top + 1, size=shape, dtype=np.int64)
    lab.flat[-1] = top
    write_labels(tmp_path / "l.tif", lab, pixel_size=(2.0, 0.5, 0.25))
    back = read_image(tmp_path / "l.tif")
    assert back.dtype == dtype and back.axes == {2: "YX", 3: "ZYX", 4: "TZYX"}[lab.ndim]
    assert np.array_equal(back.data, lab)
    assert back.pixel_size == ((2.0 if dtype == np.uint16 else None), 0.5, 0.25)  # as write_image stores them
    with tifffile.TiffFile(tmp_path / "l.tif") as tif:  # strips, never tiles (ImageJ 1.x reads no tiled TIFF)
        page = tif.pages[0]
        assert not page.is_tiled and page.compression == 8 and tif.is_imagej == (dtype == np.uint16)
        assert len(page.dataoffsets) == -(-shape[-2] // page.rowsperstrip)


def test_streamed_labels_from_a_memory_map(tmp_path, monkeypatch):
    """A memory-mapped uint32 label image (the engine's stitched output) is written as it is read."""
    _small_blocks(monkeypatch, 64 * 1024)
    lab = np.lib.format.open_memmap(tmp_path / "scratch.npy", mode="w+", dtype=np.uint32, shape=(300, 257))
    lab[:] = np.arange(lab.size, dtype=np.uint32).reshape(lab.shape) % 5000
    write_labels(tmp_path / "small.tif", lab)
    first = np.array(lab)
    lab[-1, -1] = 123456
    write_labels(tmp_path / "big.tif", lab)
    small, big = read_image(tmp_path / "small.tif").data, read_image(tmp_path / "big.tif").data
    assert small.dtype == np.uint16 and big.dtype == np.uint32
    assert np.array_equal(big, lab) and np.array_equal(small, first)


def test_streamed_labels_fail_atomically(tmp_path, monkeypatch):
    """A failure in the middle of the stream leaves the previous file untouched and no temporary file."""
    import opsef_orchestrator.io.writers as writers

    _small_blocks(monkeypatch)
    target = tmp_path / "l.tif"
    old = np.ones((64, 64), np.uint16)
    write_labels(target, old)
    encode = writers._deflate()
    calls = []

    def failing(data):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full")
        return encode(data)

    monkeypatch.setattr(writers, "_deflate", lambda: failing)
    with pytest.raises(OSError, match="disk full"):
        write_labels(target, np.full((64, 64), 2, np.uint16))
    assert len(calls) == 5 and sorted(p.name for p in tmp_path.iterdir()) == ["l.tif"]
    assert np.array_equal(read_image(target).data, old)
    with pytest.raises(ValueError, match="negative"):
        write_labels(tmp_path / "n.tif", np.array([[0, -1]]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.tif"]


def _rss_file_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no RssFile in /proc/self/status")


def test_release_pages_keeps_contents_and_frees_resident_memory(tmp_path):
    from opsef_orchestrator.io.writers import max_label, release_pages

    a = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.uint32, shape=(4096, 4096))  # 64 MiB
    before = _rss_file_mb()
    a[:] = 3
    a[4095, 4095] = 70000
    assert _rss_file_mb() - before > 48  # touched pages of a memory map are this process's resident memory
    assert release_pages(a[:2048])  # a view: the pages under it
    assert 16 < _rss_file_mb() - before < 48
    assert release_pages(a)  # the map itself: all of it
    assert _rss_file_mb() - before < 16
    assert int(a[123, 456]) == 3 and int(a[4095, 4095]) == 70000  # written pages were kept
    assert max_label(a) == 70000 and _rss_file_mb() - before < 32  # read block by block, released
    del a
    r = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert int(r[4095, 4095]) == 70000 and release_pages(r)
    assert not release_pages(np.zeros(4))  # in memory: left alone
    c = np.load(tmp_path / "a.npy", mmap_mode="c")  # copy-on-write: releasing would lose changes
    c[0, 0] = 9
    assert not release_pages(c) and int(c[0, 0]) == 9


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    pytest.skip(f"no {key} in /proc/self/status")


def test_write_labels_of_a_memory_map_keeps_memory_bounded(tmp_path):
    """64 MiB of memory-mapped uint32 labels written as uint16: the peak grows by a few blocks, not by the image
    (reading it whole would add 64 MiB of mapped pages, converting it whole another 32 MiB)."""
    from opsef_orchestrator.io.writers import release_pages

    a = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.uint32, shape=(4096, 4096))
    a[:] = 7
    a[::64, ::64] = 60000
    release_pages(a)
    write_labels(tmp_path / "warm.tif", np.ones((2, 2), np.uint16))  # imports (tifffile, imagecodecs) done before
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset this process's peak RSS (VmHWM) to its current RSS
    except OSError:
        pytest.skip("cannot reset the peak RSS here")
    base = _status_mb("VmRSS")
    write_labels(tmp_path / "l.tif", a)
    grown = _status_mb("VmHWM") - base
    assert grown < 48, f"peak RSS grew by {grown:.0f} MiB"
    back = read_image(tmp_path / "l.tif", memmap=True).data
    assert back.dtype == np.uint16 and int(back[64, 64]) == 60000 and int(back[65, 64]) == 7


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("imagej") is None or shutil.which("xvfb-run") is None,
                    reason="Debian imagej / xvfb-run not installed")
def test_imagej_opens_streamed_labels(tmp_path, monkeypatch):
    """Real ImageJ 1.x reads label TIFFs written in many strips and blocks (2D and a Z stack) pixel for pixel."""
    _small_blocks(monkeypatch, 8192)
    rng = np.random.default_rng(1)
    lab = rng.integers(0, 65536, size=(150, 170), dtype=np.uint32)
    lab[0, 0] = 65535
    stack = rng.integers(0, 300, size=(3, 40, 50), dtype=np.uint16)
    write_labels(tmp_path / "l2.tif", lab, pixel_size=(None, 0.5, 0.5))
    write_labels(tmp_path / "l3.tif", stack, pixel_size=(2.0, 0.5, 0.5))
    macro = f"""
open("{tmp_path}/l2.tif");
print("l2 bitdepth=" + bitDepth() + " size=" + getWidth() + "x" + getHeight());
getPixelSize(unit, pw, ph);
print("l2 pixel=" + pw);
saveAs("Tiff", "{tmp_path}/ij2.tif");
close();
open("{tmp_path}/l3.tif");
getVoxelSize(vw, vh, vd, u);
print("l3 slices=" + nSlices + " depth=" + vd);
saveAs("Tiff", "{tmp_path}/ij3.tif");
run("Quit");
"""
    (tmp_path / "m.ijm").write_text(macro)
    res = subprocess.run(["xvfb-run", "-a", "imagej", "-b", str(tmp_path / "m.ijm")], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    out = res.stdout + res.stderr
    assert "l2 bitdepth=16 size=170x150" in out and "l2 pixel=0.5" in out and "l3 slices=3 depth=2" in out, out
    assert np.array_equal(tifffile.imread(tmp_path / "ij2.tif"), lab)
    assert np.array_equal(tifffile.imread(tmp_path / "ij3.tif"), stack)


# ------------------------------------------------------------------ real data


def test_lif_reference_planes(shared_data: Path):
    lif = shared_data / "lif" / "testdata_2channel_xz.lif"
    ref0 = tifffile.imread(shared_data / "lif" / "xz_c0_t0.tif")
    ref1 = tifffile.imread(shared_data / "lif" / "xz_c1_t8.tif")
    a = read_image(lif, series=0, channel=0, time=0)
    assert a.axes == "YX" and a.series == "xzt"
    np.testing.assert_array_equal(a.data, ref0)
    b = read_image(lif, series="xzt", channel=1, time=8, memmap=True)
    np.testing.assert_array_equal(b.data, ref1)
    full = read_image(lif, series=0)
    assert full.axes == "TYXC" and full.shape == (20, 128, 128, 2)
    np.testing.assert_array_equal(full.data[8, :, :, 1], ref1)
    assert full.pixel_size[1] == pytest.approx(0.1403, abs=1e-3)


def test_lif_errors_and_series(shared_data: Path):
    lif = shared_data / "lif" / "testdata_2channel_xz.lif"
    with pytest.raises(ImageReadError, match=r"testdata_2channel_xz\.lif: series 7 does not exist"):
        read_image(lif, series=7)
    with pytest.raises(ImageReadError, match="series 'nope' does not exist; series names: \\['xzt'"):
        read_image(lif, series="nope")
    with pytest.raises(ImageReadError, match="channel 2 does not exist"):
        read_image(lif, series=2, channel=2)
    with pytest.raises(ImageReadError, match="time point 20 does not exist"):
        read_image(lif, series=0, time=20)
    info = inspect_image(lif)
    assert [s["name"] for s in info["series"]] == ["xzt", "xzy", "xz"]
    assert info["series"][2]["axes"] == "YXC"


def test_lif_xyzt_lambda(shared_data: Path):
    lif = shared_data / "lif" / "LeicaLASX_wavelength-sweep_example.lif"
    img = read_image(lif, series="x_y_z_t_lambdaEmi")
    assert img.axes == "TZYXC" and img.shape == (2, 11, 64, 64, 10)
    assert img.pixel_size == pytest.approx((0.5002, 0.1048, 0.1048), abs=1e-3)
    sub = read_image(lif, series=2, time=1, channel=3, z=(2, 8, 3))
    assert sub.axes == "ZYX" and sub.shape == (2, 64, 64)
    np.testing.assert_array_equal(sub.data[1], img.data[1, 5, :, :, 3])


def test_lif_truncated(shared_data: Path, tmp_path):
    raw = (shared_data / "lif" / "testdata_2channel_xz.lif").read_bytes()
    cut = tmp_path / "cut.lif"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageReadError, match=r"^.*cut\.lif: "):
        read_image(cut, series=2)


def test_real_tiff_and_png(shared_data: Path):
    cho = read_image(shared_data / "fluo3d" / "cho_t00_img.tif")
    assert cho.axes == "ZYX" and cho.shape == (5, 443, 512) and cho.dtype == np.uint8
    roi_tif = sorted((shared_data / "imagej_roi").glob("*/*.tif"))[0]
    he = read_image(roi_tif)
    assert he.axes == "YXC" and he.shape == (512, 512, 3) and he.pixel_size[1] == pytest.approx(0.25, abs=0.01)
    pngs = list_images(shared_data / "dsb2018" / "train" / "images")
    assert len(pngs) == 35
    for p in pngs[:5]:
        img = read_image(p)
        assert img.axes in ("YX", "YXC") and img.data.shape[-1] in (3,) + img.data.shape[-1:]
