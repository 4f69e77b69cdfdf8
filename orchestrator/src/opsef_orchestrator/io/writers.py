"""Write images and label images atomically (temporary file in the same folder, then ``os.replace``).

Label images are written block by block (:func:`write_labels`), so a label
image memory-mapped from disk (a whole slide) is never held in memory whole.
"""
from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from opsef_orchestrator.io.image import CANONICAL_AXES, is_canonical

__all__ = ["atomic_path", "max_label", "release_pages", "write_image", "write_labels"]

#: About how many bytes of a label image :func:`write_labels` and :func:`max_label` read at once.
BLOCK_BYTES = 16 << 20
#: Uncompressed bytes per TIFF strip of a label image (tifffile's default for compressed strips).
STRIP_BYTES = 256 << 10


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Mode of written files: what ``open()`` would give (mkstemp's 0600 would hide outputs from a shared group).
_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces ``path`` when the block succeeds.

    The temporary name keeps the suffix (so writers that go by it still work)
    and is removed if the block raises.

    Examples
    --------
    >>> d = Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "out.txt") as tmp:
    ...     _ = tmp.write_text("hi")
    >>> (d / "out.txt").read_text(), sorted(p.name for p in d.iterdir())
    ('hi', ['out.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".part" + "".join(path.suffixes))
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, _FILE_MODE)
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def write_image(path: str | os.PathLike[str], data: np.ndarray, axes: str | None = None,
                pixel_size: tuple[float | None, float | None, float | None] | None = None,
                *, compression: str | None = "zlib", metadata: dict[str, Any] | None = None) -> Path:
    """Write an image atomically: TIFF (ImageJ hyperstack where possible) or PNG/JPEG.

    Parameters
    ----------
    path : str or Path
        ``.tif``/``.tiff`` or ``.png``/``.jpg`` (2D grey or RGB uint8/uint16 only).
    data : numpy.ndarray
        The pixels.
    axes : str, optional
        Canonical axes (subsequence of ``"TZYXC"``); default ``"YX"``/``"ZYX"``
        by dimensions (``"YXC"`` for 3D with a last axis of 3 or 4).
    pixel_size : (z, y, x) in µm, optional
        Stored as ImageJ resolution/spacing (TIFF only).
    compression : str or None
        TIFF compression (``"zlib"``, ``None``...).
    metadata : dict, optional
        Extra ImageJ metadata entries.

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> from opsef_orchestrator.io.readers import read_image
    >>> f = Path(tempfile.mkdtemp()) / "x.tif"
    >>> _ = write_image(f, np.ones((2, 5, 6, 3), np.uint16), "ZYXC", pixel_size=(2.0, 0.5, 0.5))
    >>> img = read_image(f)
    >>> img.axes, img.shape, img.pixel_size
    ('ZYXC', (2, 5, 6, 3), (2.0, 0.5, 0.5))
    """
    path = Path(path)
    data = np.asarray(data)
    if axes is None:
        axes = {2: "YX", 3: "YXC" if data.shape[-1] in (3, 4) else "ZYX", 4: "ZYXC", 5: "TZYXC"}.get(data.ndim, "")
    axes = axes.upper()
    if len(axes) != data.ndim or not is_canonical(axes):
        raise ValueError(f"axes {axes!r} must be a subsequence of {CANONICAL_AXES!r} with one letter per "
                         f"dimension of shape {data.shape}")
    suffix = path.suffix.lower()
    if suffix in (".png", ".jpg", ".jpeg"):
        import imageio.v3 as iio

        if axes not in ("YX", "YXC") or data.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"{path}: PNG/JPEG hold 2D grey or RGB uint8/uint16 images, got axes {axes!r} "
                             f"and dtype {data.dtype}; write a .tif instead")
        with atomic_path(path) as tmp:
            iio.imwrite(tmp, data, extension=suffix)
        return path
    if suffix not in (".tif", ".tiff"):
        raise ValueError(f"{path}: cannot write {suffix!r} files; use .tif, .png or .jpg")
    import tifffile

    imagej = data.dtype in (np.uint8, np.uint16, np.float32) and not (
        axes.endswith("C") and data.shape[-1] in (3, 4) and data.dtype == np.uint8 and axes == "YXC")
    if imagej:
        # ImageJ order TZCYX: move C in front of Y
        order = [axes.index(a) for a in "TZCYX" if a in axes]
        out = np.ascontiguousarray(data.transpose(order))
        kwargs = _tiff_keywords(True, "".join(axes[i] for i in order), pixel_size)
        kwargs["metadata"].update(metadata or {})
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, out, compression=compression, **kwargs)
    else:
        kwargs = _tiff_keywords(False, axes.replace("C", "S") if axes == "YXC" else axes, pixel_size)
        photometric = "rgb" if axes == "YXC" and data.shape[-1] in (3, 4) else "minisblack"
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, data, photometric=photometric, compression=compression, **kwargs)
    return path


def _tiff_keywords(imagej: bool, axes: str, pixel_size: tuple[float | None, float | None, float | None] | None
                   ) -> dict[str, Any]:
    """``tifffile.imwrite`` keywords for axes and pixel size: an ImageJ hyperstack's (µm, z spacing) or a plain TIFF's."""
    md: dict[str, Any] = {"axes": axes}
    kwargs: dict[str, Any] = {"metadata": md}
    z, y, x = pixel_size if pixel_size is not None else (None, None, None)
    if imagej:
        kwargs["imagej"] = True
        if y and x:
            kwargs["resolution"] = (1.0 / x, 1.0 / y)
            md["unit"] = "um"
        if z:
            md["spacing"] = z
    elif y and x:
        kwargs["resolution"] = (1e4 / x, 1e4 / y)
        kwargs["resolutionunit"] = "CENTIMETER"
    return kwargs


def _shared_mapping(array: np.ndarray) -> tuple[mmap.mmap, int] | None:
    """The shared (not copy-on-write) ``mmap`` behind a view of a :class:`numpy.memmap`, and its start address."""
    a: Any = array
    while isinstance(a, np.ndarray):
        if isinstance(a.base, mmap.mmap):  # the memmap that numpy created on the mapping
            if not isinstance(a, np.memmap) or a.mode not in ("r", "r+", "w+"):
                return None
            skipped = a.offset % mmap.ALLOCATIONGRANULARITY  # numpy maps from an aligned file offset
            return a.base, a.ctypes.data - skipped
        a = a.base
    return None


def _byte_bounds(array: np.ndarray) -> tuple[int, int]:
    utils = getattr(np.lib, "array_utils", None)  # numpy >= 2
    return (utils.byte_bounds if utils is not None else np.byte_bounds)(array)  # type: ignore[attr-defined]


def release_pages(array: np.ndarray) -> bool:
    """Hand the pages under a view of a shared memory map back to the page cache, out of this process's memory.

    Pages touched through a :class:`numpy.memmap` stay in the process's
    resident set (and its peak RSS) until unmapped; ``madvise(MADV_DONTNEED)``
    drops them from the process. The contents are kept: for a shared file
    mapping the page cache and the file hold them (written pages stay dirty
    there) and the next access reads them in again. Only the pages spanned by
    ``array`` are released (the whole map for the memmap itself). Arrays that
    are not views of a shared memory map (in-memory arrays, copy-on-write maps
    of mode ``"c"``) are left alone.

    Parameters
    ----------
    array : numpy.ndarray
        A :class:`numpy.memmap`, or a view of one.

    Returns
    -------
    bool
        Whether pages were released.

    Examples
    --------
    >>> f = Path(tempfile.mkdtemp()) / "a.npy"
    >>> a = np.lib.format.open_memmap(f, mode="w+", dtype=np.uint32, shape=(64, 1024))
    >>> a[5] = 7
    >>> release_pages(a[5:6]), int(a[5, 3]), release_pages(np.zeros(3))
    (True, 7, False)
    """
    found = _shared_mapping(array)
    if found is None or not hasattr(mmap, "MADV_DONTNEED") or array.size == 0:
        return False
    mm, address = found
    low, high = _byte_bounds(array)
    try:
        begin = max(low - address, 0) // mmap.PAGESIZE * mmap.PAGESIZE
        end = min(high - address, len(mm))
        if end <= begin:
            return False
        mm.madvise(mmap.MADV_DONTNEED, begin, end - begin)
    except (ValueError, OSError):  # closed map, or a kernel without madvise
        return False
    return True


def _planes(labels: np.ndarray) -> np.ndarray:
    """``labels`` as (planes, rows, columns); a view for C-contiguous arrays (memory maps included)."""
    return labels.reshape((-1,) + labels.shape[-2:])


def _row_blocks(planes: np.ndarray, rows: int) -> Iterator[np.ndarray]:
    """Blocks of ``rows`` whole rows of each plane, in file order; memory-mapped pages are released after each."""
    for plane in range(planes.shape[0]):
        for y in range(0, planes.shape[1], rows):
            block = planes[plane, y:y + rows]
            yield block
            release_pages(block)


def _block_rows(width: int, itemsize: int, multiple: int = 1) -> int:
    """Rows (a multiple of ``multiple``) of about :data:`BLOCK_BYTES`."""
    return max(1, BLOCK_BYTES // (max(1, width * itemsize) * multiple)) * multiple


def _label_range(labels: np.ndarray) -> tuple[int, int]:
    """Smallest and largest value, block by block (0, 0 when empty)."""
    if labels.size == 0:
        return 0, 0
    if labels.ndim < 2:
        return int(labels.min()), int(labels.max())
    lo, hi = 0, 0
    signed = labels.dtype.kind == "i"
    for block in _row_blocks(_planes(labels), _block_rows(labels.shape[-1], labels.dtype.itemsize)):
        hi = max(hi, int(block.max()))
        if signed:
            lo = min(lo, int(block.min()))
    return lo, hi


def max_label(labels: np.ndarray) -> int:
    """The largest label of an integer label image (0 when empty), read block by block.

    A memory-mapped label image is read in blocks of about
    :data:`BLOCK_BYTES` and its pages released after each (see
    :func:`release_pages`), so its size does not add to the resident memory.

    Examples
    --------
    >>> max_label(np.array([[0, 3], [70000, 2]], np.uint32)), max_label(np.zeros((0, 4), np.uint16))
    (70000, 0)
    """
    labels = labels if isinstance(labels, np.ndarray) else np.asarray(labels)
    if labels.dtype.kind not in "biu":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    return max(_label_range(labels)[1], 0)


def _deflate() -> Callable[[Any], bytes]:
    """The zlib-stream encoder tifffile uses for ``compression="zlib"`` (libdeflate where imagecodecs has it)."""
    import imagecodecs

    deflate = getattr(imagecodecs, "DEFLATE", None)
    if deflate is not None and deflate.available:
        return imagecodecs.deflate_encode
    return imagecodecs.zlib_encode


def _write_label_tiff(path: Path, labels: np.ndarray, axes: str, dtype: np.dtype,
                      pixel_size: tuple[float | None, float | None, float | None] | None) -> None:
    """Write strips of zlib-compressed rows from blocks of ``labels``, converted to ``dtype`` one block at a time.

    uint16 is written as an ImageJ hyperstack (what :func:`write_image` writes), uint32 as a plain TIFF with
    tifffile shape metadata. Strips, never tiles: ImageJ 1.x does not open tiled TIFFs.
    """
    import tifffile

    dtype = np.dtype(dtype).newbyteorder("<")
    planes = _planes(labels)
    height, width = planes.shape[1:]
    rowsperstrip = max(1, min(height, STRIP_BYTES // max(1, width * dtype.itemsize)))
    rows = _block_rows(width, max(planes.dtype.itemsize, dtype.itemsize), rowsperstrip)
    encode = _deflate()

    def strips() -> Iterator[bytes]:
        for block in _row_blocks(planes, rows):
            converted = np.ascontiguousarray(block, dtype=dtype)
            for y in range(0, converted.shape[0], rowsperstrip):
                yield encode(converted[y:y + rowsperstrip])

    imagej = dtype.itemsize == 2  # a hyperstack as write_image writes it (TZYX is ImageJ's order already)
    kwargs = _tiff_keywords(imagej, axes, pixel_size)
    if not imagej:
        kwargs["photometric"] = "minisblack"
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, strips(), shape=labels.shape, dtype=dtype, compression="zlib", rowsperstrip=rowsperstrip,
                         byteorder="<", **kwargs)


def write_labels(path: str | os.PathLike[str], labels: np.ndarray, axes: str | None = None,
                 pixel_size: tuple[float | None, float | None, float | None] | None = None) -> Path:
    """Write a label image as TIFF: uint16 when the largest label fits (ImageJ-readable), else uint32.

    Default axes are ``"YX"``, ``"ZYX"`` or ``"TZYX"`` by dimensions (never channels).
    A TIFF is written in strips from blocks of rows (about :data:`BLOCK_BYTES`
    at a time, pages of a memory-mapped ``labels`` released after each block),
    so the memory used does not grow with the image; atomically, like
    :func:`write_image`. Other formats (``.png``) go through :func:`write_image`.

    Examples
    --------
    >>> from opsef_orchestrator.io.readers import read_image
    >>> f = Path(tempfile.mkdtemp()) / "labels.tif"
    >>> _ = write_labels(f, np.array([[0, 1], [70000, 2]], np.uint32))
    >>> read_image(f).data.dtype.name
    'uint32'
    """
    path = Path(path)
    labels = labels if isinstance(labels, np.ndarray) else np.asarray(labels)
    if labels.dtype.kind not in "biu":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if axes is None:
        axes = {2: "YX", 3: "ZYX", 4: "TZYX"}.get(labels.ndim)  # labels never have channels
    low, top = _label_range(labels)
    if low < 0:
        raise ValueError("labels must not be negative")
    dtype = np.dtype(np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32)
    streamable = (axes is not None and axes.upper() in ("YX", "ZYX", "TYX", "TZYX") and len(axes) == labels.ndim
                  and labels.size > 0 and path.suffix.lower() in (".tif", ".tiff"))
    if not streamable:
        return write_image(path, labels.astype(dtype, copy=False), axes=axes, pixel_size=pixel_size)
    _write_label_tiff(path, labels, axes.upper(), dtype, pixel_size)
    return path
