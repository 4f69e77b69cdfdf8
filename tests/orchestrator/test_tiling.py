"""Tiling: grids, image stitching, label stitching that merges objects across tile borders."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label as cc_label

from opsef_orchestrator.evaluation import match_labels
from opsef_orchestrator.synthetic import synthetic_nuclei, synthetic_nuclei_3d
from opsef_orchestrator.tiling import Tile, iter_tiles, stitch_image, stitch_labels, tile_grid, tile_starts
from tests.utils import random_disk_labels


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images have the same objects up to renumbering."""
    if not np.array_equal(a > 0, b > 0):
        return False
    m = a > 0
    pairs = np.unique(np.stack([a[m], b[m]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


@pytest.mark.parametrize("shape, tile, overlap", [((100,), 30, 10), ((37, 53), (16, 20), (4, 6)),
                                                 ((9, 33, 41), (4, 16, 16), (2, 5, 5)), ((10, 10), 64, 8),
                                                 ((64, 64), 32, 0)])
def test_cores_partition_the_image(shape, tile, overlap):
    tiles = tile_grid(shape, tile, overlap)
    count = np.zeros(shape, int)
    tiles_ = (tile,) * len(shape) if isinstance(tile, int) else tile
    for t in tiles:
        count[t.core] += 1
        assert all(0 <= r.start <= c.start < c.stop <= r.stop <= s for r, c, s in zip(t.read, t.core, shape))
        assert t.shape == tuple(min(tt, s) for tt, s in zip(tiles_, shape))
        assert all(c.stop - c.start == cc.stop - cc.start for c, cc in zip(t.core, t.core_in_tile))
    assert (count == 1).all()
    # neighbouring reads overlap by at least the overlap
    ov = (overlap,) * len(shape) if isinstance(overlap, int) else overlap
    for d, o in enumerate(ov):
        starts = sorted({t.read[d].start for t in tiles})
        stops = sorted({t.read[d].stop for t in tiles})
        for s_next, e_prev in zip(starts[1:], stops[:-1]):
            assert e_prev - s_next >= o


def test_tile_starts_cover_the_end():
    for size in range(1, 60):
        for tile in (5, 8, 13):
            for ov in range(0, tile):
                st = tile_starts(size, tile, ov)
                assert st[0] == 0 and st[-1] + min(tile, size) == size
                assert all(b - a <= tile - ov for a, b in zip(st, st[1:]))


@pytest.mark.parametrize("args, match", [(((0, 5), 4, 1), "positive sizes"), (((10, 10), 4, 4), "overlap"),
                                         (((10, 10), (4,), 1), "tile_shape"), (((10, 10), 4, (1, 1, 1)), "overlap"),
                                         (((10, 10), 0, 0), "tile_shape")])
def test_tile_grid_errors(args, match):
    with pytest.raises(ValueError, match=match):
        tile_grid(*args)


def test_stitch_image_roundtrip_with_channels_and_memmap(tmp_path):
    img = np.random.default_rng(0).random((45, 61, 3)).astype(np.float32)
    tiles = tile_grid(img.shape[:2], (16, 20), 6)
    np.testing.assert_array_equal(stitch_image(iter_tiles(img, tiles), img.shape[:2]), img)
    out = np.lib.format.open_memmap(tmp_path / "o.npy", mode="w+", dtype=np.float32, shape=img.shape)
    res = stitch_image(((t, a * 2) for t, a in iter_tiles(img, tiles)), out=out)
    assert res is out
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), img * 2)
    with pytest.raises(ValueError, match="does not match the tile shape"):
        stitch_image([(tiles[0], img[:3, :3])], img.shape)


def _relabel_per_tile(labels: np.ndarray, tiles: list[Tile], seed: int = 0):
    """Simulate independent per-tile segmentation: each tile's crop with its own random ids."""
    rng = np.random.default_rng(seed)
    for t in tiles:
        crop = labels[t.read]
        ids = np.unique(crop)
        new = np.zeros(int(labels.max()) + 1, np.int64)
        new[ids] = rng.permutation(np.arange(100, 100 + ids.size))
        new[0] = 0
        yield t, new[crop]


def test_stitch_labels_2d_recovers_objects():
    lab = random_disk_labels((200, 230), n=60, rmin=4, rmax=9, seed=3)
    tiles = tile_grid(lab.shape, (64, 64), 24)
    st = stitch_labels(_relabel_per_tile(lab, tiles), lab.shape)
    assert st.dtype == np.uint32
    assert _same_partition(lab, st)
    assert sorted(np.unique(st)) == list(range(int(lab.max()) + 1))  # unique, sequential ids


def test_stitch_labels_objects_larger_than_tiles_and_touching():
    lab = np.zeros((60, 90), np.int32)
    lab[10:50, 5:85] = 1          # spans all tiles
    lab[52:58, 20:70] = 2
    lab[52:58, 70:80] = 3         # touches 2
    tiles = tile_grid(lab.shape, (24, 24), 8)
    st = stitch_labels(iter_tiles(lab, tiles), lab.shape)
    assert _same_partition(lab, st) and st.max() == 3


def test_stitch_labels_3d_memmap(tmp_path):
    rng = np.random.default_rng(1)
    zz, yy, xx = np.indices((20, 60, 60))
    lab = np.zeros((20, 60, 60), np.int32)
    for k in range(1, 16):
        c = rng.integers([3, 5, 5], [17, 55, 55])
        m = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 16
        lab[m & (lab == 0)] = k
    lab = cc_label(lab > 0)  # overlapping balls -> merged components, touching balls stay one
    out = np.lib.format.open_memmap(tmp_path / "l.npy", mode="w+", dtype=np.uint32, shape=lab.shape)
    tiles = tile_grid(lab.shape, (10, 24, 24), (4, 10, 10))
    st = stitch_labels(_relabel_per_tile(lab, tiles, seed=2), out=out)
    assert st is out and _same_partition(lab, np.asarray(st))


def test_stitch_labels_imperfect_tiles_still_merge():
    """Tiles that segment a crossing object slightly differently still give one object."""
    lab = np.zeros((40, 80), np.int32)
    lab[10:30, 20:60] = 1
    tiles = tile_grid(lab.shape, (40, 48), 16)

    def noisy():
        for i, (t, crop) in enumerate(iter_tiles(lab, tiles)):
            crop = crop.copy()
            if i == 1:
                crop[10:12, :] = 0  # the second tile misses two rows of the object
            yield t, crop * 7

    st = stitch_labels(noisy(), lab.shape)
    assert st.max() == 1


def test_stitch_labels_errors():
    tiles = tile_grid((10, 10), 6, 2)
    with pytest.raises(ValueError, match="iou_threshold"):
        stitch_labels([], (10, 10), iou_threshold=1.5)
    with pytest.raises(ValueError, match="integers"):
        stitch_labels([(tiles[0], np.zeros(tiles[0].shape, float))], (10, 10))
    with pytest.raises(ValueError, match="uint32"):
        stitch_labels([], out=np.zeros((10, 10), np.int32))


def test_stitch_labels_many_tiles_is_fast():
    import time

    lab = random_disk_labels((400, 400), n=120, rmin=3, rmax=6, seed=0)
    tiles = tile_grid(lab.shape, (40, 40), 14)
    t0 = time.perf_counter()
    st = stitch_labels(iter_tiles(lab, tiles), lab.shape)
    assert time.perf_counter() - t0 < 10
    assert len(tiles) > 200 and _same_partition(lab, st)


# ---------------------------------------------------------------- tiles that segment an object differently
def _two_tiles() -> list[Tile]:
    """Two tiles along x of a 20 x 100 image: reads [0, 60) and [40, 100), core border at x = 50."""
    tiles = tile_grid((20, 100), (20, 60), (0, 20))
    assert [(t.read[1].start, t.read[1].stop, t.core[1].start) for t in tiles] == [(0, 60, 0), (40, 100, 50)]
    return tiles


def _in_tile(tile: Tile, lab: np.ndarray) -> np.ndarray:
    return lab[tile.read]


def test_stitch_labels_object_seen_differently_by_two_tiles_stays_whole():
    """One nucleus across the core border: the tiles' versions overlap by IoU 3/7 < 0.5 in the shared zone
    (the old IoU merge cut it in two at x = 50); it comes out whole, as the first owner's version."""
    a, b = np.zeros((20, 100), np.int32), np.zeros((20, 100), np.int32)
    a[5:15, 43:53] = 4  # the left tile's version
    b[5:15, 47:59] = 9  # the right tile's version (shifted by 4 px, 2 px wider)
    tiles = _two_tiles()
    for order in (tiles, tiles[::-1]):
        st = stitch_labels([(t, _in_tile(t, a if t is tiles[0] else b)) for t in order], (20, 100))
        assert st.max() == 1
        assert np.array_equal(st > 0, a > 0) or np.array_equal(st > 0, b > 0)


def test_stitch_labels_touching_objects_stay_distinct_when_tiles_disagree():
    """Two touching nuclei across the core border stay two, whichever tile predicts them how."""
    tiles = _two_tiles()
    # the left tile sees them as one blob (owned by the right tile: its centre is right of x = 50),
    # the right tile sees two touching objects
    blob, two = np.zeros((20, 100), np.int32), np.zeros((20, 100), np.int32)
    blob[5:15, 44:58] = 1
    two[5:15, 44:50], two[5:15, 50:58] = 1, 2
    for order in (tiles, tiles[::-1]):
        st = stitch_labels([(t, _in_tile(t, blob if t is tiles[0] else two)) for t in order], (20, 100))
        assert _same_partition(st, two)
    # the other way round: the left tile sees two, the right tile one blob (owned by the right tile)
    two[...], blob[...] = 0, 0
    two[5:15, 42:50], two[5:15, 50:58] = 1, 2
    blob[5:15, 42:59] = 1
    for order in (tiles, tiles[::-1]):
        st = stitch_labels([(t, _in_tile(t, two if t is tiles[0] else blob)) for t in order], (20, 100))
        assert st.max() == 2
    # both tiles see two touching objects, with the boundary between them at a different place
    left, right = np.zeros((20, 100), np.int32), np.zeros((20, 100), np.int32)
    left[5:15, 42:48], left[5:15, 48:57] = 1, 2
    right[5:15, 42:52], right[5:15, 52:57] = 3, 4
    for order in (tiles, tiles[::-1]):
        st = stitch_labels([(t, _in_tile(t, left if t is tiles[0] else right)) for t in order], (20, 100))
        assert st.max() == 2
        for obj in (st == 1, st == 2):  # each object is one tile's version of one nucleus
            assert any(np.array_equal(obj, v) for v in (left == 1, left == 2, right == 3, right == 4))


@pytest.mark.parametrize("other", [False, True])
def test_stitch_labels_owner_that_sees_nothing_wins_over_a_neighbours_margin(other):
    """An object that a tile sees whole in its overlap margin, where the tile owning that part sees nothing,
    is not added (the owner has the context); objects the owner sees are kept."""
    tiles = _two_tiles()
    left, right = np.zeros((20, 100), np.int32), np.zeros((20, 100), np.int32)
    left[5:15, 52:57] = 1  # in the left tile's margin, inside the right tile's core
    if other:
        right[5:15, 70:80] = 2
    for order in (tiles, tiles[::-1]):
        st = stitch_labels([(t, _in_tile(t, left if t is tiles[0] else right)) for t in order], (20, 100))
        assert _same_partition(st, right)


def _shift(a: np.ndarray, s: tuple[int, ...]) -> np.ndarray:
    out = np.zeros_like(a)
    out[tuple(slice(max(0, k), n + min(0, k)) for k, n in zip(s, a.shape))] = \
        a[tuple(slice(max(0, -k), n + min(0, -k)) for k, n in zip(s, a.shape))]
    return out


def _tile_dependent(labels: np.ndarray, tiles: list[Tile]):
    """Per-tile segmentations that differ where tiles overlap, as a model's do near tile edges: each tile sees
    the objects shifted by one pixel (direction by the parity of its grid index), and grown by one pixel into
    the background in every other tile."""
    for t in tiles:
        lab = _shift(labels, tuple(1 if i % 2 else -1 for i in t.index))
        if sum(t.index) % 2:
            dist, idx = ndimage.distance_transform_edt(lab == 0, return_indices=True)
            lab = np.where(dist <= 1, lab[tuple(idx)], 0)
        yield t, lab[t.read]


def _one_to_one(truth: np.ndarray, st: np.ndarray) -> bool:
    """Whether each stitched object lies mostly on a different true object, and every true object has one."""
    m = (st > 0) & (truth > 0)
    n = int(truth.max()) + 1
    pairs, counts = np.unique(st[m].astype(np.int64) * n + truth[m], return_counts=True)
    s_ids, t_ids = pairs // n, pairs % n
    order = np.lexsort((-counts, s_ids))
    first = np.unique(s_ids[order], return_index=True)[1]
    return len(first) == int(st.max()) and sorted(t_ids[order][first].tolist()) == list(range(1, n))


@pytest.mark.parametrize("reverse", [False, True])
def test_stitch_labels_tiles_that_disagree_give_the_untiled_objects_2d(reverse, caplog):
    _, truth = synthetic_nuclei((300, 320), n=80, radius=(5, 9), seed=3)  # at most 19 px < overlap 24
    tiles = tile_grid(truth.shape, (96, 96), 24)
    parts = list(_tile_dependent(truth, tiles))
    with caplog.at_level(logging.WARNING, logger="opsef_orchestrator.tiling"):
        st = stitch_labels(parts[::-1] if reverse else parts, truth.shape)
    assert st.max() == truth.max() == 80  # the old IoU merge: 86 (objects cut at core borders)
    assert _one_to_one(truth, st)
    assert match_labels(truth, st, 0.5).f1 == 1.0
    assert not caplog.records  # every object was seen whole by a tile


@pytest.mark.parametrize("reverse", [False, True])
def test_stitch_labels_tiles_that_disagree_give_the_untiled_objects_3d_tiled_in_z(reverse, caplog):
    _, truth = synthetic_nuclei_3d((48, 96, 96), n=30, radius=(3, 5), seed=1)
    tiles = tile_grid(truth.shape, (32, 48, 48), 16)
    assert len({t.index[0] for t in tiles}) == 2
    parts = list(_tile_dependent(truth, tiles))
    with caplog.at_level(logging.WARNING, logger="opsef_orchestrator.tiling"):
        st = stitch_labels(parts[::-1] if reverse else parts, truth.shape)
    assert st.max() == truth.max() == 30  # the old IoU merge: 45
    assert _one_to_one(truth, st)
    assert not caplog.records


def test_stitch_labels_warns_about_objects_larger_than_the_overlap(caplog):
    lab = np.zeros((40, 80), np.int32)
    lab[10:30, 20:60] = 1  # 40 px wide, overlap 16
    lab[2:6, 36:44] = 2  # small, across the core border at x = 40
    tiles = tile_grid(lab.shape, (40, 48), 16)
    with caplog.at_level(logging.WARNING, logger="opsef_orchestrator.tiling"):
        st = stitch_labels(iter_tiles(lab, tiles), lab.shape)
    assert _same_partition(lab, st)  # still joined by the IoU fallback here
    assert len(caplog.records) == 1
    msg = caplog.records[0].getMessage()
    assert msg.startswith("1 of 2 objects") and "largest extent (20, 40) px, tile overlap (None, 16) px" in msg
    assert "overlap larger than the largest object" in msg
