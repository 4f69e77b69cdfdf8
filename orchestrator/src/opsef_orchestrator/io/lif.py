"""Leica LIF / LOF / XLIF reading with :mod:`liffile` (BSD-3).

LIF dimension codes are mapped to OpSeF's axes letters: spectral axes
(``λ`` emission, ``Λ`` excitation) become C when there is no C; an x-z scan
without a Y axis stores its frames as (Z, X) and is read as a 2D image whose Y
axis is the scan's Z (this is what Bio-Formats/Fiji show). Pixel sizes come
from the dimension coordinates and are given in micrometres.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from opsef_orchestrator.io.image import ImageReadError

__all__ = ["read_lif_array", "inspect_lif", "lif_axes"]

logger = logging.getLogger(__name__)


def lif_axes(dims: tuple[str, ...]) -> str:
    """Map liffile dimension codes to axes letters (see module docs).

    Examples
    --------
    >>> lif_axes(("T", "C", "Z", "X"))
    'TCYX'
    >>> lif_axes(("T", "λ", "Z", "Y", "X"))
    'TCZYX'
    """
    letters = list(dims)
    if "C" not in letters:
        for spectral in ("λ", "Λ"):
            if spectral in letters:
                letters[letters.index(spectral)] = "C"
                break
    if "Y" not in letters and "Z" in letters:
        letters[letters.index("Z")] = "Y"
    return "".join("Q" if (len(a) != 1 or not a.isascii()) else a for a in letters)


def _pixel_size(image: Any, dims: tuple[str, ...]) -> tuple[float | None, float | None, float | None] | None:
    coords = getattr(image, "coords", {}) or {}

    def step(code: str) -> float | None:
        c = coords.get(code)
        if c is None or len(c) < 2:
            return None
        d = abs(float(c[1]) - float(c[0]))
        return d * 1e6 if d > 0 else None  # metres -> micrometres

    x = step("X")
    if "Y" in dims:
        y, z = step("Y"), step("Z")
    else:  # x-z scan: Z is the image's Y axis
        y, z = step("Z"), None
    return None if x is None and y is None and z is None else (z, y, x)


def _open(path: Path) -> Any:
    import liffile

    try:
        return liffile.LifFile(path)
    except Exception as exc:  # noqa: BLE001 - LifFileError, OSError, struct errors on truncated files
        raise ImageReadError(path, f"cannot read Leica file: {type(exc).__name__}: {exc}") from None


def _pick(lif: Any, series: int | str | None, path: Path) -> tuple[int, Any]:
    images = list(lif.images)
    if not images:
        raise ImageReadError(path, "Leica file contains no images")
    names = [im.name for im in images]
    if series is None:
        return 0, images[0]
    if isinstance(series, (int, np.integer)) and not isinstance(series, bool):
        if not -len(images) <= series < len(images):
            raise ImageReadError(path, f"series {series} does not exist: the file has {len(images)} series "
                                       f"(0..{len(images) - 1}: {names})")
        return int(series) % len(images), images[series]
    if series in names:
        return names.index(series), images[names.index(series)]
    paths = [im.path for im in images]
    if series in paths:
        return paths.index(series), images[paths.index(series)]
    if isinstance(series, str) and series.isdigit():
        return _pick(lif, int(series), path)
    raise ImageReadError(path, f"series {series!r} does not exist; series names: {names}")


def read_lif_array(path: str | Path, series: int | str | None = None, *, memmap: bool = False
                   ) -> tuple[np.ndarray, str, Any, str, dict[str, Any]]:
    """Read one series of a Leica file as stored.

    Returns
    -------
    data, axes, pixel_size, name, metadata
        The array in stored order, its axes letters (see :func:`lif_axes`), the
        (z, y, x) pixel size in µm, the series name and extra metadata.
    """
    path = Path(path)
    lif = _open(path)
    try:
        index, image = _pick(lif, series, path)
        dims = tuple(image.dims)
        try:
            data = image.asarray(out="memmap") if memmap else image.asarray()
        except Exception as exc:  # noqa: BLE001
            raise ImageReadError(path, f"cannot read series {image.name!r}: {type(exc).__name__}: {exc}") from None
        meta = {"format": str(lif.type.name).lower(), "source_axes": "".join(dims), "series_index": index,
                "series_count": len(lif.images), "series_path": image.path}
        if "Y" not in dims and "Z" in dims:
            meta["xz_scan"] = True
            logger.debug("%s: series %r is an x-z scan; its Z axis is read as Y", path, image.name)
        return data, lif_axes(dims), _pixel_size(image, dims), image.name, meta
    finally:
        lif.close()


def inspect_lif(path: str | Path) -> tuple[str, list[dict[str, Any]]]:
    """Format name and per-series descriptions (see :func:`opsef_orchestrator.io.inspect_image`)."""
    path = Path(path)
    lif = _open(path)
    try:
        entries = []
        for i, image in enumerate(lif.images):
            dims = tuple(image.dims)
            entries.append({
                "index": i, "name": image.name, "path": image.path, "lif_dims": "".join(dims),
                "source_axes": lif_axes(dims), "source_shape": tuple(image.shape), "dtype": str(image.dtype),
                "pixel_size": _pixel_size(image, dims),
            })
        return str(lif.type.name).lower(), entries
    finally:
        lif.close()
