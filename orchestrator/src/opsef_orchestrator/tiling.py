"""Split 2D/3D images into overlapping tiles and stitch results back.

:func:`tile_grid` gives each tile a ``read`` box (with overlap) and a ``core``
box (the part of the image it owns); the cores partition the image. Images are
stitched by copying each tile's core (:func:`stitch_image`); label images by
copying each tile's core labels and merging objects that cross core borders
(:func:`stitch_labels`): in the overlap, a tile's object is merged with the
already-stitched object it matches (intersection over union above a
threshold), with a union-find, so an object cut by a tile border ends up with
one id. Both stitchers stream: they take tiles one at a time and write into a
preallocated (possibly memory-mapped) output, so peak memory is bounded by the
tile size (plus one integer per object).
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from typing import Iterable, Iterator, Sequence

import numpy as np

__all__ = ["Tile", "tile_grid", "tile_starts", "iter_tiles", "stitch_image", "stitch_labels"]

logger = logging.getLogger(__name__)

Box = tuple[slice, ...]


@dataclasses.dataclass(frozen=True)
class Tile:
    """One tile of a grid.

    Attributes
    ----------
    index : tuple of int
        Position in the grid.
    read : tuple of slice
        The box to read from the image (core plus overlap), image coordinates.
    core : tuple of slice
        The box this tile owns, image coordinates; the cores partition the image.
    core_in_tile : tuple of slice
        ``core`` relative to ``read`` (to crop a tile result to its core).
    """

    index: tuple[int, ...]
    read: Box
    core: Box
    core_in_tile: Box

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the ``read`` box."""
        return tuple(s.stop - s.start for s in self.read)


def _as_tuple(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)):
        return (int(value),) * ndim
    t = tuple(int(v) for v in value)
    if len(t) != ndim:
        raise ValueError(f"{name} {tuple(value)} must have {ndim} values, one per axis of the shape")
    return t


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start positions of tiles of length ``tile`` overlapping by at least ``overlap`` along ``size``.

    The last tile ends at ``size`` (it may overlap its neighbour more);
    a tile longer than ``size`` gives one tile.

    Examples
    --------
    >>> tile_starts(10, 4, 1)
    [0, 3, 6]
    >>> tile_starts(11, 4, 1)
    [0, 3, 6, 7]
    >>> tile_starts(3, 8, 2)
    [0]
    """
    if tile >= size:
        return [0]
    stride = tile - overlap
    n = math.ceil((size - overlap) / stride)
    starts = [min(i * stride, size - tile) for i in range(n)]
    return sorted(set(starts))


def tile_grid(shape: Sequence[int], tile_shape: int | Sequence[int], overlap: int | Sequence[int] = 0) -> list[Tile]:
    """Overlapping tiles covering an image.

    Parameters
    ----------
    shape : sequence of int
        The spatial shape to tile (e.g. ``(Y, X)`` or ``(Z, Y, X)``); axes after
        these (channels) are carried along whole by ``image[tile.read]``.
    tile_shape : int or sequence of int
        Tile size per axis (clipped to the image).
    overlap : int or sequence of int
        Minimum overlap between neighbouring tiles per axis, ``0 <= overlap < tile``.
        For label stitching choose more than the diameter of an object.

    Returns
    -------
    list of Tile
        In C order of the grid. Core borders lie in the middle of each overlap.

    Raises
    ------
    ValueError
        A bad shape, tile size or overlap (named).

    Examples
    --------
    >>> tiles = tile_grid((10,), 4, 2)
    >>> [(t.read[0].start, t.read[0].stop, t.core[0].start, t.core[0].stop) for t in tiles]
    [(0, 4, 0, 3), (2, 6, 3, 5), (4, 8, 5, 7), (6, 10, 7, 10)]
    >>> len(tile_grid((100, 120), (64, 64), 16))  # 2 x 3 tiles
    6
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if ndim == 0 or any(s <= 0 for s in shape):
        raise ValueError(f"shape {shape} must have positive sizes")
    tiles_ = _as_tuple(tile_shape, ndim, "tile_shape")
    overlaps = _as_tuple(overlap, ndim, "overlap")
    for t, o in zip(tiles_, overlaps):
        if t <= 0:
            raise ValueError(f"tile_shape {tiles_} must be positive")
        if o < 0 or o >= t:
            raise ValueError(f"overlap {overlaps} must be >= 0 and smaller than tile_shape {tiles_}")
    per_axis: list[list[tuple[slice, slice]]] = []
    for size, t, o in zip(shape, tiles_, overlaps):
        t = min(t, size)
        starts = tile_starts(size, t, o)
        stops = [s + t for s in starts]
        bounds = [0] + [(stops[i] + starts[i + 1]) // 2 for i in range(len(starts) - 1)] + [size]
        per_axis.append([(slice(s, e), slice(bounds[i], bounds[i + 1]))
                         for i, (s, e) in enumerate(zip(starts, stops))])
    result = []
    for index in itertools.product(*(range(len(a)) for a in per_axis)):
        read = tuple(per_axis[d][i][0] for d, i in enumerate(index))
        core = tuple(per_axis[d][i][1] for d, i in enumerate(index))
        cit = tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(core, read))
        result.append(Tile(index=tuple(index), read=read, core=core, core_in_tile=cit))
    return result


def iter_tiles(image: np.ndarray, tiles: Iterable[Tile]) -> Iterator[tuple[Tile, np.ndarray]]:
    """Yield ``(tile, image[tile.read])`` (views; works on memory maps).

    Examples
    --------
    >>> img = np.arange(20).reshape(4, 5)
    >>> [a.shape for _, a in iter_tiles(img, tile_grid(img.shape, (4, 3), 1))]
    [(4, 3), (4, 3)]
    """
    for tile in tiles:
        yield tile, image[tile.read]


def stitch_image(tile_results: Iterable[tuple[Tile, np.ndarray]], shape: Sequence[int] | None = None,
                 dtype: np.dtype | type | str | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Stitch per-tile results by copying each tile's core into the output.

    Parameters
    ----------
    tile_results : iterable of (Tile, ndarray)
        Each result has the tile's ``read`` shape (plus any trailing axes).
    shape : sequence of int, optional
        Output shape (spatial plus trailing axes); needed unless ``out`` is given.
    dtype : dtype, optional
        Output dtype; default that of the first result.
    out : ndarray, optional
        Preallocated output (e.g. ``numpy.lib.format.open_memmap``).

    Returns
    -------
    ndarray

    Examples
    --------
    >>> img = np.random.default_rng(0).random((30, 40))
    >>> tiles = tile_grid(img.shape, (16, 16), 4)
    >>> bool((stitch_image(iter_tiles(img, tiles), img.shape) == img).all())
    True
    """
    for tile, result in tile_results:
        result = np.asarray(result)
        if result.shape[: len(tile.read)] != tile.shape:
            raise ValueError(f"tile {tile.index}: result shape {result.shape} does not match the tile shape "
                             f"{tile.shape}")
        if out is None:
            if shape is None:
                raise ValueError("give shape or out")
            full = tuple(shape) + result.shape[len(tile.read):] if len(shape) == len(tile.read) else tuple(shape)
            out = np.zeros(full, dtype=dtype or result.dtype)
        out[tile.core] = result[tile.core_in_tile]
    if out is None:
        raise ValueError("no tiles to stitch")
    return out


class _UnionFind:
    def __init__(self) -> None:
        self.parent = np.arange(1024, dtype=np.int64)

    def grow(self, n: int) -> None:
        if n > len(self.parent):
            old = len(self.parent)
            self.parent = np.resize(self.parent, max(n, 2 * old))
            self.parent[old:] = np.arange(old, len(self.parent))

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = int(p[root])
        while p[a] != root:
            p[a], a = root, int(p[a])
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _intersect(a: Box, b: Box) -> Box | None:
    out = []
    for sa, sb in zip(a, b):
        lo, hi = max(sa.start, sb.start), min(sa.stop, sb.stop)
        if lo >= hi:
            return None
        out.append(slice(lo, hi))
    return tuple(out)


def _shift(box: Box, origin: Box) -> Box:
    return tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(box, origin))


def stitch_labels(tile_labels: Iterable[tuple[Tile, np.ndarray]], shape: Sequence[int] | None = None,
                  out: np.ndarray | None = None, *, iou_threshold: float = 0.5) -> np.ndarray:
    """Stitch per-tile label images into one uint32 label image with unique ids.

    Each tile's core labels are copied into the output with new ids; then in
    each part of the tile's read box owned by an earlier tile (one zone per
    earlier tile), each object of the tile is compared with the stitched objects
    there, and merged with one whose intersection over union (within that zone)
    exceeds ``iou_threshold``.
    Objects crossing tile borders therefore keep one id, objects seen by two
    tiles are not duplicated (only the core owner writes pixels). Finally ids
    are renumbered 1..N in order of first appearance.

    Parameters
    ----------
    tile_labels : iterable of (Tile, ndarray)
        Integer labels of each tile's ``read`` box (0 = background); ids need
        only be unique within a tile. Consumed once, streaming.
    shape : sequence of int, optional
        Spatial output shape; needed unless ``out`` is given.
    out : ndarray of uint32, optional
        Preallocated output (e.g. a ``numpy.lib.format.open_memmap``); it is
        zeroed first.
    iou_threshold : float
        Merge threshold in (0, 1).

    Returns
    -------
    ndarray of uint32

    Examples
    --------
    >>> lab = np.zeros((8, 12), np.int32)
    >>> lab[2:6, 3:9] = 7   # crosses the tile border at x = 6
    >>> lab[0:2, 0:2] = 3
    >>> tiles = tile_grid(lab.shape, (8, 8), 4)
    >>> st = stitch_labels(iter_tiles(lab, tiles), lab.shape)
    >>> sorted(np.unique(st).tolist()), bool(((st > 0) == (lab > 0)).all())
    ([0, 1, 2], True)
    """
    if not 0.0 < iou_threshold < 1.0:
        raise ValueError(f"iou_threshold {iou_threshold} must be in (0, 1)")
    if out is None:
        if shape is None:
            raise ValueError("give shape or out")
        out = np.zeros(tuple(shape), np.uint32)
    else:
        if out.dtype != np.uint32:
            raise ValueError(f"out must be uint32, got {out.dtype}")
        out[...] = 0
    uf = _UnionFind()
    next_id = 1
    done: list[Tile] = []
    for tile, labels in tile_labels:
        labels = np.asarray(labels)
        if labels.shape != tile.shape:
            raise ValueError(f"tile {tile.index}: labels shape {labels.shape} does not match the tile shape "
                             f"{tile.shape}")
        if labels.dtype.kind not in "biu":
            raise ValueError(f"tile {tile.index}: labels must be integers, got {labels.dtype}")
        # 1. the tile's core labels, with new ids
        core = labels[tile.core_in_tile]
        ids, inverse = np.unique(core, return_inverse=True)
        inverse = inverse.reshape(core.shape)
        has_bg = ids.size > 0 and ids[0] == 0
        n_new = ids.size - (1 if has_bg else 0)
        new_ids = np.zeros(ids.size, np.int64)
        new_ids[1 if has_bg else 0:] = np.arange(next_id, next_id + n_new)
        if next_id + n_new >= np.iinfo(np.uint32).max:
            raise ValueError("more objects than a uint32 label image can hold")
        uf.grow(next_id + n_new)
        local_to_global = dict(zip(ids.tolist(), new_ids.tolist()))
        # 2. merge with objects in the zones owned by tiles already stitched (one zone per earlier tile)
        for prev in done:
            box = _intersect(prev.core, tile.read)
            if box is None:
                continue
            existing = np.asarray(out[box]).astype(np.int64).ravel()
            mine = labels[_shift(box, tile.read)].astype(np.int64).ravel()
            both = (existing > 0) & (mine > 0)
            if not both.any():
                continue
            pairs, inter = np.unique(np.stack([mine[both], existing[both]]), axis=1, return_counts=True)
            mine_ids, mine_area = np.unique(mine[mine > 0], return_counts=True)
            ex_ids, ex_area = np.unique(existing[existing > 0], return_counts=True)
            area_m = dict(zip(mine_ids.tolist(), mine_area.tolist()))
            area_e = dict(zip(ex_ids.tolist(), ex_area.tolist()))
            for (m, e), c in zip(pairs.T.tolist(), inter.tolist()):
                target = local_to_global.get(m, 0)
                if target > 0 and c / (area_m[m] + area_e[e] - c) > iou_threshold:
                    uf.union(target, e)
        out[tile.core] = new_ids[inverse].astype(np.uint32)
        next_id += n_new
        done.append(tile)
    # 3. renumber: roots in order of first id, then 1..N
    n = next_id
    lut = np.zeros(n, np.uint32)
    root_to_new: dict[int, int] = {}
    for i in range(1, n):
        r = uf.find(i)
        if r not in root_to_new:
            root_to_new[r] = len(root_to_new) + 1
        lut[i] = root_to_new[r]
    for tile in done:
        out[tile.core] = lut[out[tile.core]]
    logger.debug("stitched %d tiles: %d pieces -> %d objects", len(done), n - 1, len(root_to_new))
    return out
