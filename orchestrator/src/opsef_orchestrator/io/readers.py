"""Read TIFF / OME-TIFF / ImageJ hyperstacks, PNG / JPEG and Leica LIF into :class:`Image`.

:func:`read_image` is the one entry point: it picks the reader from the file
name, normalises the axes to ``"TZYXC"`` order, applies the time, channel and z
selection and checks the pixels. Every problem is an :class:`ImageReadError`
whose message starts with the path.
"""
from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from opsef_orchestrator.io.image import (
    Image,
    ImageReadError,
    ZSelection,
    check_image_data,
    normalize_axes,
    select_axes,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "TIFF_EXTENSIONS",
    "LIF_EXTENSIONS",
    "PLAIN_EXTENSIONS",
    "image_format",
    "read_image",
    "read_region",
    "inspect_image",
]

logger = logging.getLogger(__name__)

TIFF_EXTENSIONS = (".tif", ".tiff", ".btf", ".tf8")
PLAIN_EXTENSIONS = (".png", ".jpg", ".jpeg")
LIF_EXTENSIONS = (".lif", ".lof", ".xlif")
#: File name endings :func:`read_image` understands (lower case).
IMAGE_EXTENSIONS = TIFF_EXTENSIONS + PLAIN_EXTENSIONS + LIF_EXTENSIONS

#: Length units to micrometres.
_UNITS_UM = {
    "um": 1.0, "µm": 1.0, "\u00b5m": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3, "cm": 1e4,
    "m": 1e6, "meter": 1e6, "\\u00b5m": 1.0, "å": 1e-4, "a": 1e-4,
}


def image_format(path: str | os.PathLike[str]) -> str:
    """``"tiff"``, ``"plain"`` (PNG/JPEG) or ``"lif"`` for a file name; :class:`ImageReadError` otherwise.

    Examples
    --------
    >>> image_format("a/b.ome.tif"), image_format("x.PNG"), image_format("s.lif")
    ('tiff', 'plain', 'lif')
    """
    suffix = Path(path).suffix.lower()
    if suffix in TIFF_EXTENSIONS:
        return "tiff"
    if suffix in PLAIN_EXTENSIONS:
        return "plain"
    if suffix in LIF_EXTENSIONS:
        return "lif"
    raise ImageReadError(path, f"unsupported file type {suffix!r}; supported: {', '.join(IMAGE_EXTENSIONS)}")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")


def _validate_axes_arg(axes: str, ndim: int, shape: tuple[int, ...], path: Path) -> str:
    up = axes.upper()
    bad = sorted(set(up) - set("TZCYXS"))
    if bad:
        raise ImageReadError(path, f"axes {axes!r} has unknown letter(s) {''.join(bad)}; use letters of 'TZCYXS'")
    if len(up) != ndim:
        raise ImageReadError(path, f"axes {axes!r} has {len(up)} letters but the image has {ndim} "
                                   f"dimensions {shape}")
    return up


# ---------------------------------------------------------------- TIFF


def _pick_tiff_series(tif: Any, series: int | str | None, path: Path) -> tuple[int, Any]:
    all_series = tif.series
    if not all_series:
        raise ImageReadError(path, "TIFF contains no image series")
    if series is None:
        return 0, all_series[0]
    if isinstance(series, (int, np.integer)) and not isinstance(series, bool):
        if not -len(all_series) <= series < len(all_series):
            raise ImageReadError(path, f"series {series} does not exist: the file has {len(all_series)} "
                                       f"series (0..{len(all_series) - 1})")
        return int(series) % len(all_series), all_series[series]
    names = [s.name for s in all_series]
    if series in names:
        return names.index(series), all_series[names.index(series)]
    if isinstance(series, str) and series.isdigit():
        return _pick_tiff_series(tif, int(series), path)
    raise ImageReadError(path, f"series {series!r} does not exist; series names: {names}")


def _ome_pixel_size(tif: Any, index: int) -> tuple[float | None, float | None, float | None] | None:
    try:
        root = ET.fromstring(tif.ome_metadata)
    except (ET.ParseError, TypeError):
        return None
    images = [el for el in root.iter() if el.tag.endswith("}Image") or el.tag == "Image"]
    if index >= len(images):
        return None
    pixels = next((el for el in images[index] if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return None
    sizes: list[float | None] = []
    for ax in "ZYX":
        value = pixels.get(f"PhysicalSize{ax}")
        unit = pixels.get(f"PhysicalSize{ax}Unit", "µm")
        factor = _UNITS_UM.get(unit.lower()) if unit else 1.0
        sizes.append(float(value) * factor if value is not None and factor is not None else None)
    return None if all(s is None for s in sizes) else (sizes[0], sizes[1], sizes[2])


def _tiff_pixel_size(tif: Any, index: int, series: Any) -> tuple[float | None, float | None, float | None] | None:
    if tif.is_ome:
        return _ome_pixel_size(tif, index)
    page = series.keyframe if hasattr(series, "keyframe") else tif.pages[0]
    try:
        xres, yres = page.resolution
    except Exception:  # noqa: BLE001 - missing or malformed resolution tags
        return None
    factor: float | None = None
    z: float | None = None
    if tif.is_imagej:
        md = tif.imagej_metadata or {}
        unit = str(md.get("unit", "")).strip().lower()
        factor = _UNITS_UM.get(unit)
        if factor is not None and md.get("spacing"):
            z = float(md["spacing"]) * factor
    elif int(page.resolutionunit) == 3:  # centimetre
        factor = 1e4
    if factor is None or not xres or not yres:
        return None
    return (z, factor / yres, factor / xres)


def _read_tiff(path: Path, series: int | str | None, memmap: bool) -> tuple[np.ndarray, str, Any, str, dict]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            index, s = _pick_tiff_series(tif, series, path)
            src_axes = s.axes
            pixel_size = _tiff_pixel_size(tif, index, s)
            name = s.name or str(index)
            meta = {"format": "ome-tiff" if tif.is_ome else "imagej-tiff" if tif.is_imagej else "tiff",
                    "source_axes": src_axes, "series_index": index, "series_count": len(tif.series)}
            if memmap:
                try:
                    data = tifffile.memmap(path, series=index, mode="r")
                except ValueError:
                    data = s.asarray(out="memmap")
            else:
                data = s.asarray()
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds on broken files
        raise ImageReadError(path, f"cannot read TIFF: {type(exc).__name__}: {exc}") from None
    if tuple(data.shape) != tuple(s.shape):
        data = data.reshape(s.shape)
    return data, src_axes, pixel_size, name, meta


# ---------------------------------------------------------------- PNG / JPEG


def _read_plain(path: Path) -> tuple[np.ndarray, str, Any, str, dict]:
    import imageio.v3 as iio

    try:
        data = np.asarray(iio.imread(path))
    except Exception as exc:  # noqa: BLE001 - pillow raises many kinds on broken files
        raise ImageReadError(path, f"cannot read {path.suffix.lstrip('.').upper()}: "
                                   f"{type(exc).__name__}: {exc}") from None
    meta: dict[str, Any] = {"format": path.suffix.lstrip(".").lower().replace("jpeg", "jpg")}
    if data.ndim == 2:
        axes = "YX"
    elif data.ndim == 3 and data.shape[-1] in (2, 3, 4):
        axes = "YXS"
        if data.shape[-1] == 4 and np.all(data[..., 3] == np.iinfo(data.dtype).max if data.dtype.kind == "u" else 1):
            data = data[..., :3]
            meta["dropped_alpha"] = True
            logger.debug("%s: dropped the fully opaque alpha channel", path)
    else:
        raise ImageReadError(path, f"unexpected image shape {data.shape}")
    meta["source_axes"] = axes
    return data, axes, None, "0", meta


# ---------------------------------------------------------------- entry points


def read_image(path: str | os.PathLike[str], axes: str | None = None, series: int | str | None = None,
               channel: int | Sequence[int] | None = None, time: int | None = None,
               z: ZSelection | None = None, *, memmap: bool = False, check_nan: bool = True) -> Image:
    """Read an image file into an :class:`Image` with canonical ``"TZYXC"`` axes.

    Parameters
    ----------
    path : str or Path
        A TIFF (plain, OME, ImageJ hyperstack), PNG, JPEG or Leica LIF/LOF/XLIF file.
    axes : str, optional
        The axes of the stored array (letters of ``TZCYXS``, e.g. ``"ZCYX"``)
        when the file's own metadata is missing or wrong.
    series : int or str, optional
        Series (LIF image, OME image) by index or name; default the first.
    channel : int or sequence of int, optional
        Channel(s) to keep; an int removes the C axis.
    time : int, optional
        Time point to keep (removes the T axis).
    z : int, slice or (start, stop[, step]), optional
        Plane or z range to keep; an int removes the Z axis.
    memmap : bool
        Memory-map the pixels instead of reading them (TIFF: directly when the
        data are stored uncompressed and contiguously, else via a temporary file;
        LIF: directly). Use for images too large for memory.
    check_nan : bool
        Reject float images with NaN or infinite pixels.

    Returns
    -------
    Image

    Raises
    ------
    ImageReadError
        Unreadable, truncated, empty or NaN images, unknown or wrong axes, a
        missing series, channel, time point or z plane.

    Examples
    --------
    >>> import tempfile, tifffile
    >>> f = Path(tempfile.mkdtemp()) / "a.tif"
    >>> tifffile.imwrite(f, np.zeros((2, 3, 8, 9), np.uint16), imagej=True, metadata={"axes": "ZCYX"})
    >>> img = read_image(f)
    >>> img.axes, img.shape
    ('ZYXC', (2, 8, 9, 3))
    >>> read_image(f, channel=1, z=0).shape
    (8, 9)
    """
    path = Path(path)
    fmt = image_format(path)
    _check_file(path)
    if fmt == "tiff":
        data, src_axes, pixel_size, name, meta = _read_tiff(path, series, memmap)
    elif fmt == "plain":
        if series not in (None, 0, "0"):
            raise ImageReadError(path, f"series {series!r} does not exist: PNG/JPEG files hold one image")
        data, src_axes, pixel_size, name, meta = _read_plain(path)
    else:
        from opsef_orchestrator.io.lif import read_lif_array

        data, src_axes, pixel_size, name, meta = read_lif_array(path, series, memmap=memmap)
    if data.size == 0:
        raise ImageReadError(path, f"image is empty (shape {tuple(data.shape)})")
    if axes is not None:
        src_axes = _validate_axes_arg(axes, data.ndim, tuple(data.shape), path)
        meta["axes_given"] = src_axes
    data, norm_axes = normalize_axes(data, src_axes, path)
    data, norm_axes = select_axes(data, norm_axes, channel=channel, time=time, z=z, path=path)
    check_image_data(data, path, check_nan=check_nan)
    if not memmap:
        data = np.ascontiguousarray(data)
    return Image(data=data, axes=norm_axes, pixel_size=pixel_size, path=path, series=name, metadata=meta)


def _tiff_region_decode(path: Path, series: int | str | None, ys: slice, xs: slice
                        ) -> tuple[np.ndarray, Any, str] | None:
    """Decode only the tiles/strips of a single-page 2D TIFF series that overlap ``ys, xs``."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        index, s = _pick_tiff_series(tif, series, path)
        if len(s.pages) != 1 or s.pages[0] is None or s.pages[0].is_contiguous:
            return None  # contiguous data: memory-mapping is cheaper
        page = s.pages[0]
        if page.planarconfig == 2 and page.samplesperpixel > 1:  # separate planes: keep it simple
            return None
        pixel_size = _tiff_pixel_size(tif, index, s)
        name = s.name or str(index)
        height, width = page.imagelength, page.imagewidth
        y0, y1, _ = ys.indices(height)
        x0, x1, _ = xs.indices(width)
        if y1 <= y0 or x1 <= x0:
            raise ImageReadError(path, f"region {ys}, {xs} is empty for an image of {height}x{width}")
        samples = page.samplesperpixel
        out = np.zeros((y1 - y0, x1 - x0, samples), page.dtype)
        if page.is_tiled:
            th, tw = page.tilelength, page.tilewidth
            per_row = math.ceil(width / tw)
            indices = [ty * per_row + tx for ty in range(y0 // th, (y1 - 1) // th + 1)
                       for tx in range(x0 // tw, (x1 - 1) // tw + 1)]
        else:
            rps = page.rowsperstrip or height
            indices = list(range(y0 // rps, (y1 - 1) // rps + 1))
        decode = page.decode
        fh = tif.filehandle
        for i in indices:
            offset, count = page.dataoffsets[i], page.databytecounts[i]
            fh.seek(offset)
            raw = fh.read(count) if count else None
            seg, (_, _, sy, sx, _), shape = decode(raw, i, jpegtables=page.jpegtables)
            if seg is None:
                continue
            seg = seg.reshape(shape)[0]  # (length, width, samples)
            ya, yb = max(sy, y0), min(sy + seg.shape[0], y1)
            xa, xb = max(sx, x0), min(sx + seg.shape[1], x1)
            if ya < yb and xa < xb:
                out[ya - y0:yb - y0, xa - x0:xb - x0] = seg[ya - sy:yb - sy, xa - sx:xb - sx]
        return (out if samples > 1 else out[..., 0]), pixel_size, name


def read_region(path: str | os.PathLike[str], region: tuple[slice, slice], axes: str | None = None,
                series: int | str | None = None, channel: int | Sequence[int] | None = None,
                time: int | None = None, z: ZSelection | None = None) -> Image:
    """Read a YX region of an image without reading the whole image into memory.

    Tiled or striped 2D TIFFs (also compressed) decode only the tiles/strips
    that overlap the region; uncompressed TIFFs and LIF images are memory-mapped;
    anything else is read through a temporary memory-mapped file.

    Parameters
    ----------
    path : str or Path
        The image file.
    region : (slice, slice)
        Rows and columns (of the Y and X axes) to read.
    axes, series, channel, time, z
        As in :func:`read_image`.

    Returns
    -------
    Image
        Only the region (in memory); other axes as :func:`read_image` gives them.

    Examples
    --------
    >>> import tempfile, tifffile
    >>> f = Path(tempfile.mkdtemp()) / "big.tif"
    >>> a = np.arange(64 * 80, dtype=np.uint16).reshape(64, 80)
    >>> tifffile.imwrite(f, a, tile=(16, 16), compression="zlib")
    >>> r = read_region(f, (slice(10, 40), slice(5, 70)))
    >>> bool((r.data == a[10:40, 5:70]).all()), r.axes
    (True, 'YX')
    """
    path = Path(path)
    if len(region) != 2 or not all(isinstance(s, slice) for s in region):
        raise ValueError(f"region must be a (slice, slice) over Y and X, got {region!r}")
    if image_format(path) == "tiff" and axes is None and channel is None and time is None and z is None:
        _check_file(path)
        try:
            decoded = _tiff_region_decode(path, series, region[0], region[1])
        except ImageReadError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ImageReadError(path, f"cannot read TIFF region: {type(exc).__name__}: {exc}") from None
        if decoded is not None:
            data, pixel_size, name = decoded
            data, norm = normalize_axes(data, "YXS" if data.ndim == 3 else "YX", path)
            check_image_data(data, path)
            return Image(data=data, axes=norm, pixel_size=pixel_size, path=path, series=name,
                         metadata={"format": "tiff", "region": region})
    img = read_image(path, axes=axes, series=series, channel=channel, time=time, z=z, memmap=True)
    iy, ix = img.axes.index("Y"), img.axes.index("X")
    index: list[Any] = [slice(None)] * img.data.ndim
    index[iy], index[ix] = region
    data = np.array(img.data[tuple(index)])
    check_image_data(data, path)
    return img.with_data(data)


def _compression_name(value: Any) -> str:
    import tifffile

    try:
        return str(tifffile.COMPRESSION(value).name)
    except ValueError:
        return str(value)


def inspect_image(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What the importer sees in a file, without reading the pixels.

    Returns
    -------
    dict
        ``path``, ``format``, and ``series``: a list of dicts with ``index``,
        ``name``, ``source_axes`` (as stored), ``source_shape``, ``axes`` and
        ``shape`` (canonical ``TZYXC``), ``dtype``, ``pixel_size`` (z, y, x in
        µm or None), and for LIF ``channels``.

    Examples
    --------
    >>> import tempfile, tifffile
    >>> f = Path(tempfile.mkdtemp()) / "a.tif"
    >>> tifffile.imwrite(f, np.zeros((3, 8, 9), np.uint8), imagej=True, metadata={"axes": "ZYX"})
    >>> info = inspect_image(f)
    >>> info["format"], info["series"][0]["axes"], info["series"][0]["shape"]
    ('imagej-tiff', 'ZYX', (3, 8, 9))
    """
    path = Path(path)
    fmt = image_format(path)
    _check_file(path)
    entries: list[dict[str, Any]] = []
    if fmt == "tiff":
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                kind = "ome-tiff" if tif.is_ome else "imagej-tiff" if tif.is_imagej else "tiff"
                for i, s in enumerate(tif.series):
                    page = s.keyframe
                    entries.append({
                        "index": i, "name": s.name or str(i), "source_axes": s.axes,
                        "source_shape": tuple(s.shape), "dtype": str(s.dtype),
                        "pixel_size": _tiff_pixel_size(tif, i, s),
                        "compression": _compression_name(page.compression),
                        "tiled": bool(page.is_tiled),
                        "memmappable": bool(s.dataoffset is not None),
                    })
        except ImageReadError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ImageReadError(path, f"cannot read TIFF: {type(exc).__name__}: {exc}") from None
    elif fmt == "plain":
        data, src_axes, _, _, meta = _read_plain(path)
        kind = meta["format"]
        entries.append({"index": 0, "name": "0", "source_axes": src_axes, "source_shape": tuple(data.shape),
                        "dtype": str(data.dtype), "pixel_size": None})
    else:
        from opsef_orchestrator.io.lif import inspect_lif

        kind, entries = inspect_lif(path)
    for e in entries:
        try:
            view = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape=e["source_shape"],
                                                   strides=(0,) * len(e["source_shape"]))
            _, norm = normalize_axes(view, e["source_axes"], path)
            e["axes"] = norm
            e["shape"] = tuple(_.shape)
        except ImageReadError as exc:
            e["axes"] = None
            e["shape"] = None
            e["problem"] = exc.problem
    return {"path": str(path), "format": kind, "series": entries}
