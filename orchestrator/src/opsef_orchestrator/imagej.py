"""ImageJ / Fiji / AnnotatorJ round trip: ROI zips, 16-bit label TIFFs, AnnotatorJ pair lists.

Export
    :func:`labels_to_roi_zip` writes one ROI per object: the exact pixel
    outline (a ``TRACED`` polygon along pixel edges, as ImageJ's wand makes),
    or a composite ROI (``ShapeRoi``) for objects with holes or several
    fragments. ROI names are the label ids, zero-padded (``"0042"``, the
    convention of AnnotatorJ's OpSeF import), so they map back to label ids;
    the object's class is the ROI *group* (1..255; class 0 = no group) and sets
    the stroke colour. A 3D label image (ZYX) gives one ROI per object and
    slice, with the slice as the ROI's position (Fiji selects that slice) and
    names ``"0042-z0007"`` (label 42 on slice 7, 1-based as in ImageJ).
Import
    :func:`roi_zip_to_labels` rasterises ROIs (polygon, freehand, traced,
    rectangle, oval, composite) with ImageJ's rule: a pixel belongs to a ROI
    when its centre lies inside (even-odd rule for composite shapes). ROIs are
    painted in file order, a later ROI overwriting an earlier one where they
    overlap (so a ROI lying inside a later, larger ROI disappears). Labels are
    the ROI names when all names are distinct integers (or, for slices of 3D
    objects, ``"<label>-z<slice>"`` with distinct pairs), else 1..n in file order.
    Line and point ROIs are skipped with a warning.

Examples
--------
>>> import numpy as np, tempfile, pathlib
>>> lab = np.zeros((8, 8), np.uint16); lab[1:4, 1:5] = 7; lab[5:7, 5:8] = 9
>>> p = pathlib.Path(tempfile.mkdtemp()) / "rois.zip"
>>> _ = labels_to_roi_zip(lab, p, classes={7: 2})
>>> back, classes = roi_zip_to_labels(p, lab.shape, return_classes=True)
>>> bool(np.array_equal(back, lab)), classes
(True, {7: 2, 9: 0})
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "MAX_UINT16_LABELS",
    "label_outlines",
    "labels_to_rois",
    "labels_to_roi_zip",
    "rois_to_labels",
    "roi_zip_to_labels",
    "write_label_tiff",
    "write_image_tiff",
    "write_annotatorj_pairs",
    "read_annotatorj_pairs",
    "export_for_imagej",
]

logger = logging.getLogger(__name__)

MAX_UINT16_LABELS = 65535

#: stroke colours (RGB) of classes 1.. (class 0 / no group: yellow, ImageJ's default look)
_CLASS_COLOURS = [
    (255, 255, 0), (255, 0, 0), (0, 255, 0), (0, 128, 255), (255, 0, 255), (0, 255, 255),
    (255, 128, 0), (128, 0, 255), (128, 255, 0), (255, 255, 255),
]


def _argb(rgb: tuple[int, int, int]) -> bytes:
    return bytes((255, *rgb))


# ----------------------------------------------------------------------------- outlines
# Pixel-edge directions; vertices are pixel corners (x = column, y = row).
_E, _S, _W, _N = 0, 1, 2, 3
_STEP = {_E: (1, 0), _S: (0, 1), _W: (-1, 0), _N: (0, -1)}


def _trace_loops(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines (clockwise on screen, holes anticlockwise) of a 2D boolean mask, as corner (x, y) arrays.

    Diagonally touching pixels are joined into one outline (8-connectivity).
    """
    m = np.pad(mask.astype(bool), 1)
    fg = m[1:-1, 1:-1]
    up, down = m[:-2, 1:-1], m[2:, 1:-1]
    left, right = m[1:-1, :-2], m[1:-1, 2:]
    out: dict[tuple[int, int], list[int]] = {}
    for d, nb, (dx, dy) in ((_E, up, (0, 0)), (_S, right, (1, 0)), (_W, down, (1, 1)), (_N, left, (0, 1))):
        rr, cc = np.nonzero(fg & ~nb)
        for x, y in zip((cc + dx).tolist(), (rr + dy).tolist()):
            out.setdefault((x, y), []).append(d)
    loops: list[np.ndarray] = []
    while out:
        start = next(iter(out))
        v = start
        d = out[v][0]
        pts = []
        prev_d = None
        while True:
            dirs = out.get(v)
            if not dirs:
                break
            if len(dirs) == 1:
                d = dirs[0]
            else:  # ambiguous corner: prefer the anticlockwise turn (joins diagonal pixels)
                want = (prev_d - 1) % 4 if prev_d is not None else dirs[0]
                d = want if want in dirs else dirs[0]
            dirs.remove(d)
            if not dirs:
                del out[v]
            if d != prev_d:
                pts.append(v)  # keep only corners
            prev_d = d
            v = (v[0] + _STEP[d][0], v[1] + _STEP[d][1])
            if v == start:
                break
        if len(pts) >= 3:
            loops.append(np.asarray(pts, dtype=np.int64))
    return loops


def label_outlines(labels: np.ndarray) -> dict[int, list[np.ndarray]]:
    """Pixel-edge outlines of every object of a 2D label image.

    Returns
    -------
    dict
        label id -> list of closed loops, each an (n, 2) array of (x, y)
        corner coordinates in image space (one loop per fragment and per hole).

    Examples
    --------
    >>> import numpy as np
    >>> label_outlines(np.array([[0, 3], [0, 3]]))[3][0].tolist()
    [[1, 0], [2, 0], [2, 2], [1, 2]]
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2D, got shape {labels.shape}")
    out: dict[int, list[np.ndarray]] = {}
    for i, sl in enumerate(ndi.find_objects(labels.astype(np.int64, copy=False))):
        if sl is None:
            continue
        lab = i + 1
        loops = _trace_loops(labels[sl] == lab)
        off = np.array([sl[1].start, sl[0].start])
        out[lab] = [lp + off for lp in loops]
    return out


# ----------------------------------------------------------------------------- export
def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be a 2D (YX) or 3D (ZYX) label image, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels has negative values")
    return labels


def labels_to_rois(labels: np.ndarray, classes: Mapping[int, int] | None = None, name_width: int = 4) -> list:
    """One :class:`roifile.ImagejRoi` per object, or per object and slice of a 3D image (see the module notes).

    Parameters
    ----------
    labels : ndarray of int, 2D (YX) or 3D (ZYX)
    classes : mapping label -> class (0..255), optional
        Stored as the ROI group (class 0 = no group) and stroke colour.
    name_width : int
        Zero padding of the ROI names (label ids).

    Examples
    --------
    >>> import numpy as np
    >>> vol = np.zeros((3, 6, 6), np.uint16); vol[1:3, 1:4, 1:4] = 5
    >>> [(r.name, r.position) for r in labels_to_rois(vol)]
    [('0005-z0002', 2), ('0005-z0003', 3)]
    """
    labels = _check_labels(labels)
    classes = dict(classes or {})
    for lab, c in classes.items():
        if not 0 <= int(c) <= 255:
            raise ValueError(f"classes[{lab}] = {c}: ImageJ ROI groups must be in 0..255")
    if labels.ndim == 2:
        return [_outline_roi(loops, f"{lab:0{name_width}d}", int(classes.get(lab, 0)))
                for lab, loops in label_outlines(labels).items()]
    rois = []
    for z in range(labels.shape[0]):
        for lab, loops in label_outlines(labels[z]).items():
            roi = _outline_roi(loops, f"{lab:0{name_width}d}-z{z + 1:04d}", int(classes.get(lab, 0)))
            roi.position = z + 1
            rois.append(roi)
    return rois


def _outline_roi(loops: list[np.ndarray], name: str, c: int):
    """A traced polygon ROI of one outline, or a composite ROI of several (holes, fragments)."""
    from roifile import ROI_OPTIONS, ROI_TYPE, ImagejRoi

    allpts = np.concatenate(loops)
    x0, y0 = allpts.min(axis=0)
    x1, y1 = allpts.max(axis=0)
    if len(loops) == 1:
        roi = ImagejRoi()
        roi.roitype = ROI_TYPE.TRACED
        pts = loops[0]
        roi.integer_coordinates = (pts - [x0, y0]).astype(np.int32)
        roi.n_coordinates = len(pts)
    else:
        roi = ImagejRoi()
        roi.roitype = ROI_TYPE.RECT
        path: list[float] = []
        for lp in loops:
            path += [0.0, float(lp[0, 0]), float(lp[0, 1])]
            for x, y in lp[1:]:
                path += [1.0, float(x), float(y)]
            path.append(4.0)
        roi.multi_coordinates = np.asarray(path, np.float32)
        roi.shape_roi_size = len(path)
    roi.version = 228
    roi.left, roi.top, roi.right, roi.bottom = int(x0), int(y0), int(x1), int(y1)
    roi.name = name
    roi.group = c
    roi.options = ROI_OPTIONS(0)
    roi.stroke_color = _argb(_CLASS_COLOURS[c % len(_CLASS_COLOURS)]) if c else _argb(_CLASS_COLOURS[0])
    return roi


def labels_to_roi_zip(
    labels: np.ndarray, path: str | os.PathLike, classes: Mapping[int, int] | None = None
) -> Path:
    """Write an ImageJ ROI zip (ROI Manager "Open" / AnnotatorJ) of the objects' outlines.

    Parameters
    ----------
    labels : ndarray of int, 2D (YX) or 3D (ZYX: one ROI per object and slice)
    path : path
        The ``.zip`` to write (atomically; replaced if it exists).
    classes : mapping label -> class, optional
        Class of each object, stored as the ROI group (0..255).

    Returns
    -------
    Path
    """
    rois = labels_to_rois(labels, classes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for r in rois:
                zf.writestr(r.name + ".roi", r.tobytes())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("wrote %d ROIs to %s", len(rois), path)
    return path


# ----------------------------------------------------------------------------- import
def _fill_polygon(xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Scan-line fill with ImageJ's rule: pixel centres inside, even-odd.

    A row's centre line ``y + 0.5`` crosses an edge when ``ymin <= y + 0.5 < ymax``;
    between two crossings ``xa < xb`` the pixels ``floor(xa + 0.5) <= x < floor(xb + 0.5)``
    are filled (so a centre exactly on a left edge is outside, on a right edge inside,
    as ImageJ's ``PolygonFiller`` does).
    """
    m = np.zeros(shape, bool)
    xy = np.asarray(xy, dtype=np.float64)
    if len(xy) < 3:
        return m
    x0, y0 = xy[:, 0], xy[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    h, w = shape
    r0 = max(int(np.floor(y0.min() - 0.5)), 0)
    r1 = min(int(np.ceil(y0.max() + 0.5)), h)
    if r1 <= r0:
        return m
    yc = np.arange(r0, r1) + 0.5
    ylo, yhi = np.minimum(y0, y1), np.maximum(y0, y1)
    ri, ei = np.nonzero((yc[:, None] >= ylo[None]) & (yc[:, None] < yhi[None]))
    if ri.size == 0:
        return m
    xc = x0[ei] + (yc[ri] - y0[ei]) / (y1[ei] - y0[ei]) * (x1[ei] - x0[ei])
    order = np.lexsort((xc, ri))
    ri, xc = ri[order], xc[order]
    c0 = max(int(np.floor(x0.min())) - 1, 0)
    c1 = min(int(np.ceil(x0.max())) + 2, w)
    if c1 <= c0:
        return m
    start = np.clip(np.floor(xc[0::2] + 0.5).astype(np.int64), c0, c1) - c0
    stop = np.clip(np.floor(xc[1::2] + 0.5).astype(np.int64), c0, c1) - c0
    rows = ri[0::2]
    acc = np.zeros((r1 - r0, c1 - c0 + 1), np.int32)
    np.add.at(acc, (rows, start), 1)
    np.add.at(acc, (rows, stop), -1)
    m[r0:r1, c0:c1] = np.cumsum(acc, axis=1)[:, :-1] > 0
    return m


def _roi_mask(roi, shape: tuple[int, int]) -> np.ndarray | None:
    from roifile import ROI_TYPE

    t = roi.roitype
    if roi.composite and roi.multi_coordinates is not None:
        m = np.zeros(shape, bool)
        for xy in roi.coordinates(multi=True):
            m ^= _fill_polygon(np.asarray(xy), shape)
        return m
    if t in (ROI_TYPE.POLYGON, ROI_TYPE.FREEHAND, ROI_TYPE.TRACED):
        return _fill_polygon(np.asarray(roi.coordinates(), float), shape)
    if t == ROI_TYPE.RECT:
        m = np.zeros(shape, bool)
        if roi.subpixelrect:
            x0, y0, w, h = roi.xd, roi.yd, roi.widthd, roi.heightd
            xs, ys = np.arange(shape[1]) + 0.5, np.arange(shape[0]) + 0.5
            m[np.ix_((ys > y0) & (ys < y0 + h), (xs > x0) & (xs < x0 + w))] = True
        else:
            m[max(roi.top, 0):max(roi.bottom, 0), max(roi.left, 0):max(roi.right, 0)] = True
        return m
    if t == ROI_TYPE.OVAL:
        if roi.subpixelrect:
            x0, y0, w, h = roi.xd, roi.yd, roi.widthd, roi.heightd
        else:
            x0, y0, w, h = roi.left, roi.top, roi.right - roi.left, roi.bottom - roi.top
        if w <= 0 or h <= 0:
            return np.zeros(shape, bool)
        yy, xx = np.ogrid[: shape[0], : shape[1]]
        return ((xx + 0.5 - (x0 + w / 2)) / (w / 2)) ** 2 + ((yy + 0.5 - (y0 + h / 2)) / (h / 2)) ** 2 <= 1
    return None


def _roi_slice(roi, shape: tuple[int, ...]) -> int | None:
    if len(shape) == 2:
        return None
    z = roi.z_position or roi.position
    if not z:
        raise ValueError(f"ROI {roi.name!r} has no slice position, but the label image is 3D {shape}")
    if not 1 <= z <= shape[0]:
        raise ValueError(f"ROI {roi.name!r} is on slice {z}, the label image has {shape[0]} slices")
    return int(z) - 1


def rois_to_labels(
    rois: Sequence, shape: tuple[int, ...], return_classes: bool = False
) -> np.ndarray | tuple[np.ndarray, dict[int, int]]:
    """Rasterise ImageJ ROIs into a label image (rules in the module notes).

    Parameters
    ----------
    rois : sequence of roifile.ImagejRoi
    shape : tuple
        (rows, columns), or (slices, rows, columns) for ROIs with a slice position.
    return_classes : bool
        Also return {label: ROI group}.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"shape must be 2D or 3D and non-empty, got {shape}")
    names = [r.name for r in rois]
    numeric = all(re.fullmatch(r"\d+", n or "") for n in names) and len(set(names)) == len(names)
    sliced = all(re.fullmatch(r"\d+-z\d+", n or "") for n in names) and len(set(names)) == len(names)
    ids = [int(n.split("-z")[0]) for n in names] if (numeric or sliced) and rois else list(range(1, len(rois) + 1))
    if numeric and rois and len(set(ids)) != len(ids):
        ids = list(range(1, len(rois) + 1))
    maxid = max(ids, default=0)
    dtype = np.uint16 if maxid <= MAX_UINT16_LABELS else np.uint32
    labels = np.zeros(shape, dtype)
    classes: dict[int, int] = {}
    skipped = 0
    for lab, roi in zip(ids, rois):
        m = _roi_mask(roi, shape[-2:])  # type: ignore[arg-type]
        if m is None:
            skipped += 1
            continue
        z = _roi_slice(roi, shape)
        (labels if z is None else labels[z])[m] = lab
        classes[lab] = int(roi.group)
    if skipped:
        logger.warning("skipped %d ROIs that are not areas (lines, points, text)", skipped)
    present = set(np.unique(labels).tolist()) - {0}
    lost = [k for k in classes if k not in present]
    if lost:
        logger.info("%d ROIs are hidden by later ROIs or empty: labels %s", len(lost), lost[:10])
    classes = {k: v for k, v in classes.items() if k in present}
    return (labels, classes) if return_classes else labels


def roi_zip_to_labels(
    path: str | os.PathLike, shape: tuple[int, ...], return_classes: bool = False
) -> np.ndarray | tuple[np.ndarray, dict[int, int]]:
    """Read an ImageJ ROI zip (or single ``.roi``) and rasterise it into labels.

    Parameters
    ----------
    path : path
        ``RoiSet.zip`` from Fiji's ROI Manager / AnnotatorJ, or a ``.roi`` file.
    shape : tuple
        Shape of the image the ROIs belong to.
    return_classes : bool
        Also return {label: class} from the ROI groups.

    Returns
    -------
    labels : ndarray (uint16, or uint32 above 65535)
    classes : dict, only with ``return_classes``
    """
    from roifile import ImagejRoi

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path {path} is not a file")
    rois = ImagejRoi.fromfile(path)
    if not isinstance(rois, list):
        rois = [rois]
    return rois_to_labels(rois, shape, return_classes=return_classes)


# ----------------------------------------------------------------------------- TIFFs and pair lists
def _atomic_tiff(path: Path, data: np.ndarray, **kwargs) -> Path:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        tifffile.imwrite(tmp, data, **kwargs)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _resolution(pixel_size: float | None) -> dict:
    if pixel_size is None:
        return {}
    if not pixel_size > 0:
        raise ValueError(f"pixel_size must be > 0, got {pixel_size}")
    return {"resolution": (1.0 / pixel_size, 1.0 / pixel_size)}


def write_label_tiff(
    labels: np.ndarray, path: str | os.PathLike, pixel_size: float | None = None, allow_32bit: bool = False
) -> Path:
    """Write a label image as a 16-bit ImageJ TIFF (Fiji opens it as a 16-bit image).

    Parameters
    ----------
    labels : ndarray of int, 2D or 3D (ZYX)
    path : path
    pixel_size : float, optional
        Pixel size in micrometres (written as the TIFF resolution / ImageJ unit).
    allow_32bit : bool
        If a label id exceeds 65535: write a 32-bit (uint32) TIFF and log a
        warning instead of raising ``ValueError``.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib, tifffile
    >>> p = write_label_tiff(np.array([[0, 70000]]), pathlib.Path(tempfile.mkdtemp()) / "l.tif", allow_32bit=True)
    >>> tifffile.imread(p).dtype
    dtype('uint32')
    """
    labels = np.asarray(labels)
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"labels must be an integer image, got dtype {labels.dtype}")
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be 2D or 3D, got shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels has negative values")
    mx = int(labels.max(initial=0))
    path = Path(path)
    res = _resolution(pixel_size)
    meta = {"unit": "um"} if pixel_size else {}
    if mx <= MAX_UINT16_LABELS:
        axes = "YX" if labels.ndim == 2 else "ZYX"
        return _atomic_tiff(path, labels.astype(np.uint16), imagej=True, metadata={"axes": axes, **meta}, **res)
    n = int(np.unique(labels).size - 1)
    msg = (f"labels has label ids up to {mx} ({n} objects): a 16-bit label TIFF holds at most "
           f"{MAX_UINT16_LABELS}")
    if not allow_32bit:
        raise ValueError(msg + "; pass allow_32bit=True to write a 32-bit TIFF (or relabel sequentially)")
    logger.warning("%s: writing a 32-bit (uint32) TIFF %s instead", msg, path)
    return _atomic_tiff(path, labels.astype(np.uint32), **res)


def write_image_tiff(image: np.ndarray, path: str | os.PathLike, pixel_size: float | None = None) -> Path:
    """Write an image Fiji/AnnotatorJ can open: RGB(A) uint8 as RGB, else greyscale (2D/3D)."""
    img = np.asarray(image)
    path = Path(path)
    res = _resolution(pixel_size)
    if img.ndim == 3 and img.shape[-1] in (3, 4) and img.dtype == np.uint8:
        return _atomic_tiff(path, img[..., :3], photometric="rgb", **res)
    if img.dtype == np.float64 or img.dtype == np.int64 or img.dtype == np.int32 or img.dtype == np.uint32:
        img = img.astype(np.float32)
    elif img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype == np.int8:
        img = img.astype(np.int16)
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be 2D, 3D or RGB, got shape {img.shape}")
    axes = "YX" if img.ndim == 2 else "ZYX"
    return _atomic_tiff(path, img, imagej=True, metadata={"axes": axes}, **res)


def write_annotatorj_pairs(
    root: str | os.PathLike,
    pairs: Iterable[Sequence[str]],
    name: str = "opsef",
    list_dir: str = "10_ForFiji",
) -> Path:
    """Write the ``FilePairList`` text file read by AnnotatorJ's "Import OpSeF" plugin.

    Format (one ``;``-separated line each): ``root;<absolute root>``, then
    ``<image>;<mask>[;<class mask>...]`` with paths relative to ``root``.
    AnnotatorJ takes ``root`` as the parent of the folder holding the list,
    so the list goes into ``root/10_ForFiji/FilePairList_<name>.txt``. Class
    masks must be named ``..._MaskClassNN...`` (two-digit class).

    Returns
    -------
    Path of the list file.
    """
    root = Path(root).resolve()
    lines = [f"root;{root}"]
    for p in pairs:
        p = [str(Path(x).as_posix()) for x in p]
        if len(p) < 2:
            raise ValueError(f"pairs entries need an image and a mask, got {p}")
        for x in p:
            if ";" in x:
                raise ValueError(f"pairs paths must not contain ';': {x!r}")
            if Path(x).is_absolute():
                raise ValueError(f"pairs paths must be relative to root: {x!r}")
        if "/" not in p[1]:
            raise ValueError(f"mask paths must include a folder (AnnotatorJ needs one): {p[1]!r}")
        lines.append(";".join(p))
    out = root / list_dir / f"FilePairList_{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, out)
    return out


def read_annotatorj_pairs(path: str | os.PathLike) -> tuple[Path, list[list[str]]]:
    """Read a ``FilePairList`` file: (root, [[image, mask, class masks...], ...])."""
    root: Path | None = None
    pairs: list[list[str]] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        if line.startswith("root;"):
            root = Path(line[5:])
        else:
            pairs.append(line.split(";"))
    if root is None:
        root = Path(path).resolve().parent.parent
    return root, pairs


def export_for_imagej(
    out_dir: str | os.PathLike,
    items: Iterable[tuple[str, np.ndarray | None, np.ndarray, Mapping[int, int] | None]],
    pixel_size: float | None = None,
    name: str = "opsef",
    allow_32bit: bool = False,
) -> dict[str, list[Path]]:
    """Export images, labels and ROIs for Fiji and AnnotatorJ in one folder.

    Layout of ``out_dir``::

        images/<stem>.tif                    the image (RGB or greyscale)
        masks/<stem>_labels.tif              16-bit labels
        masks/<stem>_MaskClassNN.tif         labels of class NN (only when classes are given)
        rois/<stem>_RoiSet.zip               ROI zip for Fiji's ROI Manager
        12_TmpRoisFromFiji/<mask>_ROIs.zip   the same ROIs, which AnnotatorJ loads instead of the mask
        10_ForFiji/FilePairList_<name>.txt   AnnotatorJ's OpSeF import list

    Parameters
    ----------
    items : iterable of (stem, image or None, labels, classes or None)
    """
    out = Path(out_dir)
    written: dict[str, list[Path]] = {"images": [], "labels": [], "rois": [], "pairs": []}
    pairs = []
    for stem, image, labels, classes in items:
        labels = _check_labels(labels)
        if image is not None:
            img_rel = f"images/{stem}.tif"
            written["images"].append(write_image_tiff(image, out / img_rel, pixel_size))
        else:
            img_rel = None
        mask_rel = f"masks/{stem}_labels.tif"
        written["labels"].append(write_label_tiff(labels, out / mask_rel, pixel_size, allow_32bit))
        class_rels: list[str] = []
        if classes:
            from .classify import class_image

            cimg = class_image(labels, classes)
            for c in np.unique(cimg[labels > 0]).tolist():  # objects without a class are class 0
                if c > 99:
                    raise ValueError(f"classes: AnnotatorJ class masks support classes 0..99, got {c}")
                rel = f"masks/{stem}_MaskClass{c:02d}.tif"
                write_label_tiff(np.where(cimg == c, labels, 0), out / rel, pixel_size, allow_32bit)
                class_rels.append(rel)
        written["rois"].append(labels_to_roi_zip(labels, out / "rois" / f"{stem}_RoiSet.zip", classes))
        if labels.ndim == 3:  # AnnotatorJ annotates 2D images: volumes go to Fiji only
            logger.info("%s: a volume; ROIs per slice for Fiji, not in AnnotatorJ's pair list", stem)
            continue
        first_mask = class_rels[0] if class_rels else mask_rel
        aj_name = Path(first_mask).stem + "_ROIs.zip"
        labels_to_roi_zip(labels, out / "12_TmpRoisFromFiji" / aj_name, classes)
        if img_rel is not None:
            pairs.append([img_rel, *(class_rels or [mask_rel])])
    if pairs:
        written["pairs"].append(write_annotatorj_pairs(out, pairs, name=name))
    return written
