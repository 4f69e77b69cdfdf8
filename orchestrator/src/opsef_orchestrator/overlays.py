"""Pictures of segmentations: outline overlays, montage grids, multi-page TIFF stacks for Fiji.

All functions are pure (numpy in, numpy/Figure out) except the writers.
Matplotlib is used through :class:`matplotlib.figure.Figure` with the Agg
canvas only (no pyplot, no GUI backend).

Examples
--------
>>> import numpy as np
>>> img = np.zeros((8, 8)); lab = np.zeros((8, 8), int); lab[2:6, 2:6] = 1
>>> ov = outline_overlay(img, lab)
>>> ov.shape, ov.dtype, ov[2, 2].tolist(), ov[3, 3].tolist()
((8, 8, 3), dtype('uint8'), [255, 255, 0], [0, 0, 0])
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "CLASS_COLOURS",
    "to_uint8",
    "outline_overlay",
    "montage_array",
    "montage_figure",
    "figure_to_png",
    "array_to_png",
    "write_overlay_stack",
]

logger = logging.getLogger(__name__)

#: outline colours: class 0 / no class first, then classes 1, 2, ...
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 255, 0), (255, 0, 0), (0, 255, 0), (0, 128, 255), (255, 0, 255), (0, 255, 255),
    (255, 128, 0), (128, 0, 255), (128, 255, 0), (255, 255, 255),
)


def to_uint8(image: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Scale an image to uint8 between two percentiles (per image, not per channel).

    Greyscale (2D) stays 2D; RGB(A) uint8 is returned as RGB unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> to_uint8(np.array([[0.0, 0.5, 1.0]]), 0, 100).tolist()
    [[0, 128, 255]]
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] in (3, 4) and img.dtype == np.uint8:
        return img[..., :3]
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be 2D or RGB, got shape {img.shape}")
    f = img.astype(np.float64)
    finite = f[np.isfinite(f)]
    if finite.size == 0:
        return np.zeros(img.shape, np.uint8)
    lo, hi = np.percentile(finite, [low, high])
    if hi <= lo:
        hi = lo + 1.0
    out = np.clip((np.nan_to_num(f, nan=lo) - lo) / (hi - lo), 0, 1)
    return np.round(out * 255).astype(np.uint8)


def outline_overlay(
    image: np.ndarray | None,
    labels: np.ndarray,
    classes: Mapping[int, int] | None = None,
    colour: tuple[int, int, int] | None = None,
    thickness: int = 1,
    low: float = 1.0,
    high: float = 99.8,
) -> np.ndarray:
    """Draw object outlines on an image.

    Parameters
    ----------
    image : ndarray or None
        2D greyscale or RGB image (any dtype; scaled with :func:`to_uint8`);
        ``None`` draws on black.
    labels : ndarray of int, 2D
    classes : mapping label -> class, optional
        Outline colour per class (:data:`CLASS_COLOURS`).
    colour : (r, g, b), optional
        One colour for all outlines (default yellow; ignored with ``classes``).
    thickness : int
        Outline width in pixels (inside the objects).

    Returns
    -------
    ndarray
        (H, W, 3) uint8 RGB.
    """
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2D, got shape {labels.shape}")
    if image is None:
        rgb = np.zeros(labels.shape + (3,), np.uint8)
    else:
        g = to_uint8(image, low, high)
        rgb = np.repeat(g[..., None], 3, axis=-1) if g.ndim == 2 else g.copy()
    if rgb.shape[:2] != labels.shape:
        raise ValueError(f"image shape {rgb.shape[:2]} differs from labels shape {labels.shape}")
    if thickness < 1:
        raise ValueError(f"thickness must be >= 1, got {thickness}")
    edge = find_boundaries(labels, mode="inner")
    for _ in range(thickness - 1):
        from scipy import ndimage as ndi

        edge = ndi.binary_dilation(edge) & (labels > 0)
    if classes:
        lut = np.zeros(int(max(labels.max(initial=0), max(classes, default=0))) + 1, np.int64)
        for k, c in classes.items():
            lut[int(k)] = int(c)
        cls = lut[labels]
        pal = np.array(CLASS_COLOURS, np.uint8)
        rgb[edge] = pal[cls[edge] % len(pal)]
    else:
        rgb[edge] = np.array(colour or CLASS_COLOURS[0], np.uint8)
    return rgb


def montage_array(tiles: Sequence[Sequence[np.ndarray | None]], gap: int = 4, fill: int = 255) -> np.ndarray:
    """Grid of RGB tiles (rows x columns) as one RGB array; ``None`` tiles stay blank.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.zeros((2, 3, 3), np.uint8)
    >>> montage_array([[t, t], [t, None]], gap=1).shape
    (5, 7, 3)
    """
    rows = [list(r) for r in tiles]
    if not rows or not any(t is not None for r in rows for t in r):
        raise ValueError("tiles must contain at least one image")
    ncol = max(len(r) for r in rows)
    rgb = [[None if t is None else (np.repeat(to_uint8(t)[..., None], 3, -1) if np.ndim(t) == 2 else to_uint8(t))
             for t in r] + [None] * (ncol - len(r)) for r in rows]
    h = max(t.shape[0] for r in rgb for t in r if t is not None)
    w = max(t.shape[1] for r in rgb for t in r if t is not None)
    out = np.full((len(rows) * h + (len(rows) - 1) * gap, ncol * w + (ncol - 1) * gap, 3), fill, np.uint8)
    for i, r in enumerate(rgb):
        for j, t in enumerate(r):
            if t is not None:
                y, x = i * (h + gap), j * (w + gap)
                out[y:y + t.shape[0], x:x + t.shape[1]] = t
    return out


def montage_figure(
    grid: Mapping[tuple[str, str], np.ndarray],
    rows: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    title: str | None = None,
    tile_inches: float = 2.2,
    notes: Mapping[tuple[str, str], str] | None = None,
):
    """The seed's Figure 5A: one image, pipelines as rows, models/parameters as columns.

    Parameters
    ----------
    grid : mapping (row name, column name) -> RGB (or greyscale) image
    rows, columns : sequence of str, optional
        Order of the rows/columns (default: order of first appearance).
    title : str, optional
    notes : mapping (row, column) -> str, optional
        Small text under each tile (e.g. object count, F1).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not grid:
        raise ValueError("grid is empty")
    rows = list(rows) if rows is not None else list(dict.fromkeys(k[0] for k in grid))
    columns = list(columns) if columns is not None else list(dict.fromkeys(k[1] for k in grid))
    fig = Figure(figsize=(tile_inches * len(columns) + 0.8, tile_inches * len(rows) + (0.6 if title else 0.3)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    for i, r in enumerate(rows):
        for j, c in enumerate(columns):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            img = grid.get((r, c))
            if img is not None:
                ax.imshow(img if np.ndim(img) == 3 else to_uint8(img), cmap=None if np.ndim(img) == 3 else "gray",
                          interpolation="nearest")
            else:
                ax.set_facecolor("#eeeeee")
            if i == 0:
                ax.set_title(str(c), fontsize=9)
            if j == 0:
                ax.set_ylabel(str(r), fontsize=9)
            if notes and (r, c) in notes:
                ax.set_xlabel(notes[(r, c)], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def figure_to_png(fig, dpi: int = 100) -> bytes:
    """PNG bytes of a matplotlib Figure (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def array_to_png(image: np.ndarray) -> bytes:
    """PNG bytes of an image (scaled to uint8 if needed)."""
    import imageio.v3 as iio

    img = np.asarray(image)
    if not (img.dtype == np.uint8 and (img.ndim == 2 or (img.ndim == 3 and img.shape[-1] in (3, 4)))):
        img = to_uint8(img)
    return iio.imwrite("<bytes>", img, extension=".png")


def write_overlay_stack(
    overlays: Sequence[np.ndarray], path: str | os.PathLike, slice_labels: Sequence[str] | None = None
) -> Path:
    """Multi-page RGB TIFF (an ImageJ stack with slice labels) of overlays, for review in Fiji.

    Tiles of different sizes are padded (black) to the largest.
    """
    import tempfile

    import tifffile

    if not overlays:
        raise ValueError("overlays is empty")
    rgb = [np.repeat(to_uint8(o)[..., None], 3, -1) if np.ndim(o) == 2 else to_uint8(o) for o in overlays]
    h = max(o.shape[0] for o in rgb)
    w = max(o.shape[1] for o in rgb)
    stack = np.zeros((len(rgb), h, w, 3), np.uint8)
    for k, o in enumerate(rgb):
        stack[k, : o.shape[0], : o.shape[1]] = o
    if slice_labels is not None and len(slice_labels) != len(rgb):
        raise ValueError(f"slice_labels has {len(slice_labels)} names for {len(rgb)} overlays")
    meta = {"axes": "TYXS"}
    if slice_labels is not None:
        meta["Labels"] = [str(s) for s in slice_labels]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        tifffile.imwrite(tmp, stack, imagej=True, photometric="rgb", metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
