"""Write images and label images atomically (temporary file in the same folder, then ``os.replace``)."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from opsef_orchestrator.io.image import CANONICAL_AXES, is_canonical

__all__ = ["atomic_path", "write_image", "write_labels"]


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

    kwargs: dict[str, Any] = {"compression": compression}
    imagej = data.dtype in (np.uint8, np.uint16, np.float32) and not (
        axes.endswith("C") and data.shape[-1] in (3, 4) and data.dtype == np.uint8 and axes == "YXC")
    if imagej:
        # ImageJ order TZCYX: move C in front of Y
        order = [axes.index(a) for a in "TZCYX" if a in axes]
        out = np.ascontiguousarray(data.transpose(order))
        ij_axes = "".join(axes[i] for i in order)
        md: dict[str, Any] = {"axes": ij_axes}
        if pixel_size is not None:
            z, y, x = pixel_size
            if y and x:
                kwargs["resolution"] = (1.0 / x, 1.0 / y)
                md["unit"] = "um"
            if z:
                md["spacing"] = z
        md.update(metadata or {})
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, out, imagej=True, metadata=md, **kwargs)
    else:
        md = {"axes": axes.replace("C", "S") if axes == "YXC" else axes}
        photometric = "rgb" if axes == "YXC" and data.shape[-1] in (3, 4) else "minisblack"
        if pixel_size is not None and pixel_size[1] and pixel_size[2]:
            kwargs["resolution"] = (1e4 / pixel_size[2], 1e4 / pixel_size[1])
            kwargs["resolutionunit"] = "CENTIMETER"
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, data, photometric=photometric, metadata=md, **kwargs)
    return path


def write_labels(path: str | os.PathLike[str], labels: np.ndarray, axes: str | None = None,
                 pixel_size: tuple[float | None, float | None, float | None] | None = None) -> Path:
    """Write a label image as TIFF: uint16 when the largest label fits (ImageJ-readable), else uint32.

    Default axes are ``"YX"``, ``"ZYX"`` or ``"TZYX"`` by dimensions (never channels).

    Examples
    --------
    >>> from opsef_orchestrator.io.readers import read_image
    >>> f = Path(tempfile.mkdtemp()) / "labels.tif"
    >>> _ = write_labels(f, np.array([[0, 1], [70000, 2]], np.uint32))
    >>> read_image(f).data.dtype.name
    'uint32'
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biu":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels must not be negative")
    if axes is None:
        axes = {2: "YX", 3: "ZYX", 4: "TZYX"}.get(labels.ndim)  # labels never have channels
    top = int(labels.max()) if labels.size else 0
    dtype = np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32
    return write_image(path, labels.astype(dtype, copy=False), axes=axes, pixel_size=pixel_size)
