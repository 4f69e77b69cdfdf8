"""Split 2D/3D images into overlapping tiles and stitch results back.

:func:`tile_grid` gives each tile a ``read`` box (with overlap) and a ``core``
box (the part of the image it owns); the cores partition the image. Images are
stitched by copying each tile's core (:func:`stitch_image`); label images by
taking each object whole from one tile that saw it whole, preferably the tile
whose core holds its centre (:func:`stitch_labels`; this needs an overlap
larger than the largest object), so that an object crossing a core border is
neither cut nor duplicated even where neighbouring tiles predict it with
different shapes. Both stitchers stream: they take tiles one at a time and
write into a preallocated (possibly memory-mapped) output, so peak memory is
bounded by the tile size (plus a few integers per object).
"""
from __future__ import annotations

import bisect
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
        For label stitching choose more than the largest object (see :func:`stitch_labels`).

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


_PIECE, _WEAK, _STRONG = 1, 2, 3  # how a stitched raw id was written (see stitch_labels)


def _object_boxes(loc: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Bounding boxes ``(starts, stops)`` of objects ``1..n`` of a compact label image (row 0: background)."""
    from scipy import ndimage

    starts = np.zeros((n + 1, loc.ndim), np.int64)
    stops = np.zeros((n + 1, loc.ndim), np.int64)
    for k, sl in enumerate(ndimage.find_objects(loc, max_label=n), start=1):
        if sl is not None:
            starts[k] = [s.start for s in sl]
            stops[k] = [s.stop for s in sl]
    return starts, stops


def _label_at(labels: np.ndarray, point: np.ndarray) -> int:
    """The label at ``point`` (tile coordinates), 0 outside the tile."""
    p = tuple(point.tolist())
    return int(labels[p]) if all(0 <= v < s for v, s in zip(p, labels.shape)) else 0


def _contain_centres(loc: np.ndarray, region: np.ndarray, k: int, e: int, centre_k: np.ndarray,
                     centre_e: np.ndarray) -> bool:
    """Whether object ``k`` of a tile (``loc``) and ``e`` (written, ``region``) contain each other's centre."""
    return _label_at(region, centre_k) == e and _label_at(loc, centre_e) == k


def _stand_ins(region: np.ndarray, kind: np.ndarray, centres: np.ndarray, c_lo: np.ndarray,
               c_hi: np.ndarray) -> list[int]:
    """Raw ids in ``region`` written by a tile that does not own them, whose centre lies in the core ``c_lo:c_hi``."""
    present = np.unique(region)
    present = present[kind[present] == _WEAK]
    return present[np.all((centres[present] >= c_lo) & (centres[present] < c_hi), axis=1)].tolist()


def _clear(out: np.ndarray, box: Box, raw_id: int) -> None:
    """Remove the pixels of one stitched piece (inside ``box``) from ``out``."""
    sub = np.array(out[box])
    sub[sub == raw_id] = 0
    out[box] = sub


def stitch_labels(tile_labels: Iterable[tuple[Tile, np.ndarray]], shape: Sequence[int] | None = None,
                  out: np.ndarray | None = None, *, iou_threshold: float = 0.5) -> np.ndarray:
    """Stitch per-tile label images into one uint32 label image with unique ids.

    Each object is taken whole from one tile that saw it whole, never glued
    together from parts of two tiles' versions at a core border (as StarDist's
    ``predict_instances_big`` does, made robust to neighbouring tiles that
    predict an object differently). In a tile, an object is *complete* if it
    does not touch the tile's read edge on a side where there is a
    neighbouring tile, else *cut*; it is *owned* by the tile whose core holds
    its bounding-box centre. Tiles write their objects with all their pixels
    (also outside their core), only where nothing is written yet. Two versions
    of an object are *the same* when their intersection is more than half of
    the smaller one, or each contains the other's centre.

    * An owned complete object is skipped if an earlier owner wrote the same
      object with at least as much context (distance to the read edges that
      have neighbours: tiles may place the centre of their versions on either
      side of a core border); else it is written, and replaces the versions
      of non-owners.
    * A complete object that the tile does not own is written if no tile
      wrote the same object, as a stand-in until its owner is stitched: the
      owner replaces it by its own version, keeps it where it sees the object
      cut, and removes it where it sees no object at all. Once the owner is
      stitched, such objects only fill what the tile's own objects replaced
      (e.g. where a neighbour saw two touching nuclei as one).
    * A cut object whose box reaches the tile's core is skipped if the same
      object was written whole, else written as a *piece* and merged with the
      same object's earlier pieces. A complete object replaces the pieces
      that are the same object or that it covers by more than half. Pieces
      that no complete version replaces (objects larger than the overlap) are
      merged, by union-find, with pieces of earlier tiles whose intersection
      over union within the two tiles' shared read box exceeds
      ``iou_threshold``; they are counted and reported in a logged warning,
      since they may be cut.

    So every object smaller than the overlap comes from exactly one tile (its
    owner where the owner sees it whole), and nothing merges two complete
    objects: distinct touching objects stay distinct. Finally ids are
    renumbered 1..N in order of first appearance.

    Parameters
    ----------
    tile_labels : iterable of (Tile, ndarray)
        Integer labels of each tile's ``read`` box (0 = background), from the
        tiles of one :func:`tile_grid` call; ids need only be unique within a
        tile. Consumed once, streaming.
    shape : sequence of int, optional
        Spatial output shape; needed unless ``out`` is given.
    out : ndarray of uint32, optional
        Preallocated output (e.g. a ``numpy.lib.format.open_memmap``); it is
        zeroed first. Only tile-sized parts of it are read and written.
    iou_threshold : float
        Merge threshold in (0, 1) for the pieces of objects that no tile saw
        whole.

    Returns
    -------
    ndarray of uint32

    Notes
    -----
    **Requirement: the overlap between tiles must be larger than the largest
    object** (its bounding-box extent along each tiled axis). Tile cores meet
    in the middle of each overlap, so an object up to the overlap in size that
    crosses a core border lies whole in at least one of the two tiles; larger
    objects may be cut and are reported (logged warning) with the overlap and
    the largest extent seen. Memory: besides ``out``, one tile-sized label
    image at a time, plus a few integers per object.

    Examples
    --------
    >>> lab = np.zeros((8, 12), np.int32)
    >>> lab[2:6, 5:7] = 7   # crosses the tile-core border at x = 6, seen whole by both tiles
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
    full = out.shape
    uf = _UnionFind()
    area = np.zeros(1024, np.int64)  # pixels of each raw id in `out`
    kind = np.zeros(1024, np.int8)  # _PIECE / _WEAK / _STRONG per raw id
    centres = np.zeros((1024, len(full)), np.int64)  # bounding-box centre of each raw id (image coordinates)
    context_of = np.zeros(1024, np.int64)  # distance of each raw id to its tile's read edges (with neighbours)
    box_lo = np.zeros((1024, len(full)), np.int64)  # bounding box of each raw id (image coordinates)
    box_hi = np.zeros((1024, len(full)), np.int64)

    def box_of(i: int) -> Box:
        return tuple(slice(int(a), int(b)) for a, b in zip(box_lo[i], box_hi[i]))

    next_id = 1
    done: list[Tile] = []
    reads: list[set[tuple[int, int]]] = [set() for _ in full]
    origin_tile: dict[int, int] = {}  # the tile (index in `done`) of each piece
    core_start: list[list[int]] = [[] for _ in full]  # per axis, sorted starts of the cores of the tiles seen
    core_stop: list[dict[int, int]] = [{} for _ in full]
    done_cores: set[tuple[int, ...]] = set()

    def owner_done(point: np.ndarray) -> bool:
        """Whether the tile whose core holds ``point`` was stitched already."""
        key = []
        for d, v in enumerate(point.tolist()):
            i = bisect.bisect_right(core_start[d], v) - 1
            if i < 0 or v >= core_stop[d][core_start[d][i]]:
                return False
            key.append(core_start[d][i])
        return tuple(key) in done_cores

    for tile, labels in tile_labels:
        labels = np.asarray(labels)
        if labels.shape != tile.shape:
            raise ValueError(f"tile {tile.index}: labels shape {labels.shape} does not match the tile shape "
                             f"{tile.shape}")
        if labels.dtype.kind not in "biu":
            raise ValueError(f"tile {tile.index}: labels must be integers, got {labels.dtype}")
        for d, r in enumerate(tile.read):
            reads[d].add((r.start, r.stop))
            if tile.core[d].start not in core_stop[d]:
                core_stop[d][tile.core[d].start] = tile.core[d].stop
                bisect.insort(core_start[d], tile.core[d].start)
        done.append(tile)
        done_cores.add(tuple(c.start for c in tile.core))
        # 1. the tile's objects as 1..n, their sizes, boxes, and whether they are complete / owned here
        ids, inverse = np.unique(labels, return_inverse=True)
        has_bg = ids.size > 0 and ids[0] == 0
        n = ids.size - int(has_bg)
        c_lo, c_hi = np.array([c.start for c in tile.core]), np.array([c.stop for c in tile.core])
        if n == 0:  # the owner sees no object: remove what non-owners wrote in its core
            for e in _stand_ins(np.array(out[tile.read]), kind, centres, c_lo, c_hi):
                _clear(out, box_of(e), e)
                area[e] = 0
            continue
        loc = inverse.reshape(labels.shape) + (0 if has_bg else 1)
        area_l = np.bincount(loc.ravel(), minlength=n + 1)
        cut = np.zeros(n + 1, bool)
        for d, r in enumerate(tile.read):
            if r.start > 0:
                cut[np.take(loc, 0, axis=d)] = True
            if r.stop < full[d]:
                cut[np.take(loc, -1, axis=d)] = True
        cut[0] = False
        origin = np.array([r.start for r in tile.read])
        lo, hi = _object_boxes(loc, n)
        lo, hi = lo + origin, hi + origin
        reaches_core = np.all((lo < c_hi) & (hi > c_lo), axis=1)
        centre = (lo + hi - 1) // 2
        owned = np.all((centre >= c_lo) & (centre < c_hi), axis=1)
        # context: distance of each object to the nearest read edge that has a neighbouring tile behind it
        context = np.full(n + 1, np.iinfo(np.int64).max, np.int64)
        for d, r in enumerate(tile.read):
            if r.start > 0:
                context = np.minimum(context, lo[:, d] - r.start)
            if r.stop < full[d]:
                context = np.minimum(context, r.stop - hi[:, d])
        # 2. overlaps with what earlier tiles wrote in this tile's read box
        region = np.array(out[tile.read])
        both = (loc > 0) & (region > 0)
        by_obj: dict[int, list[tuple[int, int]]] = {}
        if both.any():
            key = loc[both].astype(np.int64) * next_id + region[both]
            pairs, counts = np.unique(key, return_counts=True)
            for p, c in zip(pairs.tolist(), counts.tolist()):
                by_obj.setdefault(p // next_id, []).append((p % next_id, c))
        # 3. complete objects, owned ones first: an owned object replaces the same object written by a non-owner;
        #    a non-owned one is skipped if any tile wrote it already
        cand = reaches_core & (area_l > 0)
        cand[0] = False
        whole = ~cut & (area_l > 0)
        whole[0] = False
        clear: set[int] = set()
        replaced_by: dict[int, list[int]] = {}
        complete: list[int] = []
        for k in np.flatnonzero(whole & owned).tolist() + np.flatnonzero(whole & ~owned).tolist():
            a = int(area_l[k])
            drop, replace, owners = False, [], set()
            for e, c in by_obj.get(k, ()):
                if e in replaced_by or kind[e] == _PIECE or not (2 * c > min(a, int(area[e])) or _contain_centres(
                        loc, region, k, e, centre[k] - origin, centres[e] - origin)):
                    continue  # not the same object
                if kind[e] == _STRONG and owned[k] and context[k] > context_of[e]:
                    replace.append(e)  # two owners (their versions' centres differ): the one with more context
                elif kind[e] == _STRONG or not owned[k]:
                    drop = True
                    owners.add(e)
                else:
                    replace.append(e)
            if drop:  # the owner's version duplicates another owner's: non-owners' versions inside that go
                replace = [e for e in replace if _label_at(region, centres[e] - origin) in owners]
            for e in replace:
                replaced_by.setdefault(e, []).append(k)
            if not drop:
                complete.append(k)
        clear.update(replaced_by)
        # objects written by non-owners where the owner (this tile) sees no object at all are removed
        seen = {e for hits in by_obj.values() for e, _ in hits}
        clear.update(e for e in _stand_ins(region, kind, centres, c_lo, c_hi) if e not in seen)
        # a non-owned object whose owner was stitched already (and did not write it) only fills what is removed
        complete = [k for k in complete if owned[k] or not owner_done(centre[k])
                    or any(e in clear or kind[e] == _PIECE for e, _ in by_obj.get(k, ()))]
        # pieces of earlier tiles (objects they saw cut by an edge) that are the same as, or mostly covered by,
        # this tile's complete objects are replaced by them (which take over their merges with other pieces)
        cover: dict[int, int] = {}
        best: dict[int, tuple[int, int]] = {}
        same: set[int] = set()
        for k in complete:
            for e, c in by_obj.get(k, ()):
                if kind[e] == _PIECE:
                    cover[e] = cover.get(e, 0) + c
                    best[e] = max(best.get(e, (0, 0)), (c, k))
                    if 2 * c > min(area_l[k], area[e]):
                        same.add(e)
        taken = {e: best[e][1] for e, c in cover.items() if 2 * c > area[e] or e in same}
        clear.update(taken)
        lut = np.zeros(n + 1, np.uint32)
        new_kind: list[int] = []
        for k in complete:
            if 2 * sum(c for e, c in by_obj.get(k, ()) if e not in clear) <= area_l[k]:  # else inside what is kept
                new_kind.append(_STRONG if owned[k] else _WEAK)
                lut[k] = next_id + len(new_kind) - 1
        # 4. objects cut by an edge of this tile: pieces, unless an earlier tile wrote them whole; a piece that
        #    is the same as a piece of an earlier tile is merged with it
        is_piece = np.zeros(n + 1, bool)
        joins: list[tuple[int, int]] = []
        for k in np.flatnonzero(cand & cut).tolist():
            a = int(area_l[k])
            kept = [(e, c) for e, c in by_obj.get(k, ()) if e not in clear]
            seen_whole = [(e, c) for e, c in kept if kind[e] != _PIECE]
            if 2 * sum(c for _, c in seen_whole) > a or any(2 * c > min(a, area[e]) for e, c in seen_whole):
                continue
            is_piece[k] = True
            new_kind.append(_PIECE)
            lut[k] = next_id + len(new_kind) - 1
            joins.extend((int(lut[k]), e) for e, c in kept if kind[e] == _PIECE and 2 * c > min(a, area[e]))
        n_new = len(new_kind)
        if next_id + n_new >= np.iinfo(np.uint32).max:
            raise ValueError("more objects than a uint32 label image can hold")
        uf.grow(next_id + n_new)
        if next_id + n_new > len(area):
            size = max(next_id + n_new, 2 * len(area))
            area, kind, context_of = np.resize(area, size), np.resize(kind, size), np.resize(context_of, size)
            centres = np.resize(centres, (size, len(full)))
            box_lo, box_hi = np.resize(box_lo, (size, len(full))), np.resize(box_hi, (size, len(full)))
            area[next_id:], kind[next_id:] = 0, 0
        kind[next_id:next_id + n_new] = new_kind
        written_k = np.flatnonzero(lut)
        centres[lut[written_k]] = centre[written_k]
        context_of[lut[written_k]] = context[written_k]
        box_lo[lut[written_k]], box_hi[lut[written_k]] = lo[written_k], hi[written_k]
        for e, k in itertools.chain(taken.items(), ((e, ks[0]) for e, ks in replaced_by.items() if len(ks) == 1)):
            if lut[k]:
                uf.union(int(lut[k]), e)  # the new version takes over the merges of the one it replaces
        for g, e in joins:
            uf.union(g, e)
        # pieces of one object cut by the edges of several tiles: merged by IoU where both tiles see it
        sources = {origin_tile[e] for k in np.flatnonzero(is_piece).tolist() for e, _ in by_obj.get(k, ())
                   if kind[e] == _PIECE and e not in clear}
        for t in sorted(sources):
            box = _shift(_intersect(done[t].read, tile.read), tile.read)
            existing = region[box].astype(np.int64).ravel()
            mine = loc[box].ravel()
            sel = (existing > 0) & is_piece[mine]
            key = mine[sel] * next_id + existing[sel]
            pairs, inter = np.unique(key, return_counts=True)
            area_m = np.bincount(mine, minlength=n + 1)
            e_ids, e_area = np.unique(existing[existing > 0], return_counts=True)
            area_e = dict(zip(e_ids.tolist(), e_area.tolist()))
            for p, c in zip(pairs.tolist(), inter.tolist()):
                m, e = p // next_id, p % next_id
                if kind[e] == _PIECE and origin_tile.get(e) == t and e not in clear and \
                        c / (area_m[m] + area_e[e] - c) > iou_threshold:
                    uf.union(int(lut[m]), e)
        # 5. remove what is replaced, then write this tile's objects whole where nothing is written yet
        for e in clear:
            _clear(out, box_of(e), e)
            origin_tile.pop(e, None)
            area[e] = 0
        if clear:
            region = np.array(out[tile.read])
        new = lut[loc]
        write = (new > 0) & (region == 0)
        region[write] = new[write]
        out[tile.read] = region
        area[next_id:next_id + n_new] = np.bincount(new[write].astype(np.int64) - next_id, minlength=n_new)
        for g in lut[is_piece].tolist():
            origin_tile[g] = len(done) - 1
        next_id += n_new
    # 6. renumber: groups with pixels, in order of their first id, then 1..N
    lut = np.zeros(next_id, np.uint32)
    root_to_new: dict[int, int] = {}
    pieces_only: dict[int, bool] = {}
    for i in np.flatnonzero(area[:next_id] > 0).tolist():
        r = uf.find(i)
        if r not in root_to_new:
            root_to_new[r] = len(root_to_new) + 1
        lut[i] = root_to_new[r]
        pieces_only[r] = pieces_only.get(r, True) and kind[i] == _PIECE
    for tile in done:
        out[tile.core] = lut[out[tile.core]]
    n_cut = sum(pieces_only.values())
    spans: dict[int, tuple[list[int], list[int]]] = {}  # bounding box of each object made of pieces only
    for i in origin_tile:
        r = uf.find(i)
        if area[i] > 0 and pieces_only.get(r):
            lo_i, hi_i = box_lo[i].tolist(), box_hi[i].tolist()
            lo_r, hi_r = spans.get(r, (lo_i, hi_i))
            spans[r] = ([min(u, v) for u, v in zip(lo_r, lo_i)], [max(u, v) for u, v in zip(hi_r, hi_i)])
    largest = np.max([np.subtract(h, lo_) for lo_, h in spans.values()], axis=0) if spans else np.zeros(len(full))
    logger.debug("stitched %d tiles: %d pieces -> %d objects", len(done), next_id - 1, len(root_to_new))
    if n_cut:
        overlaps = []
        for intervals in reads:
            iv = sorted(intervals)
            overlaps.append(min((a[1] - b[0] for a, b in zip(iv, iv[1:])), default=None))
        logger.warning("%d of %d objects were cut by a tile edge in every tile that reaches them (largest extent "
                       "%s px, tile overlap %s px): they were joined by overlap (iou_threshold %s) and may be cut at "
                       "tile borders; use a tile overlap larger than the largest object", n_cut, len(root_to_new),
                       tuple(largest.tolist()), tuple(overlaps), iou_threshold)
    return out
