"""Object matching and scores (issue 6): literal cases, invariants, an independent reference on real data."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from click.testing import CliRunner
from scipy.optimize import linear_sum_assignment

from opsef_orchestrator.evaluation import (
    DEFAULT_THRESHOLDS,
    MatchResult,
    aggregate,
    evaluate_pair,
    evaluation_rows,
    label_overlap,
    leaderboard,
    match_labels,
    match_pairs,
)
from tests.utils import disk_labels, perturb_labels, random_disk_labels


# ---------------------------------------------------------------- independent references
def brute_force_ious(gt: np.ndarray, pred: np.ndarray) -> dict[tuple[int, int], float]:
    """IoU of every touching pair from full boolean masks (no histogram)."""
    out = {}
    for g in np.unique(gt[gt > 0]):
        gm = gt == g
        for p in np.unique(pred[gm]):
            if p == 0:
                continue
            pm = pred == p
            out[(int(g), int(p))] = np.logical_and(gm, pm).sum() / np.logical_or(gm, pm).sum()
    return out


def greedy_unique_tp(ious: dict[tuple[int, int], float], thr: float) -> tuple[int, float]:
    """Greedy matching at IoU > thr, asserting that candidates are unique (true for thr >= 0.5)."""
    used_g, used_p, tp, s = set(), set(), 0, 0.0
    for (g, p), v in ious.items():
        if v > thr:
            assert g not in used_g and p not in used_p, "IoU > 0.5 matches must be unique"
            used_g.add(g)
            used_p.add(p)
            tp += 1
            s += v
    return tp, s


def dense_lsa_tp(gt: np.ndarray, pred: np.ndarray, thr: float) -> int:
    """stardist.matching-style dense Hungarian matching (reference for low thresholds)."""
    ious = brute_force_ious(gt, pred)
    g_ids = list(np.unique(gt[gt > 0]))
    p_ids = list(np.unique(pred[pred > 0]))
    if not g_ids or not p_ids:
        return 0
    m = np.zeros((len(g_ids), len(p_ids)))
    for (g, p), v in ious.items():
        m[g_ids.index(g), p_ids.index(p)] = v
    n = min(m.shape)
    r, c = linear_sum_assignment(-(m >= thr).astype(float) - m / (2 * n))
    return int(np.count_nonzero(m[r, c] >= thr))


# ---------------------------------------------------------------- literal arrays
def test_perfect_and_empty():
    gt = disk_labels()
    r = match_labels(gt, gt * 5)  # label values don't matter
    assert (r.tp, r.fp, r.fn, r.precision, r.recall, r.f1, r.ap, r.mean_matched_iou) == (2, 0, 0, 1, 1, 1, 1, 1)
    z = np.zeros_like(gt)
    e = match_labels(z, z)
    assert (e.tp, e.fp, e.fn, e.f1, e.ap) == (0, 0, 0, 1.0, 1.0)
    m = match_labels(gt, z)
    assert (m.tp, m.fn, m.precision, m.recall, m.f1, m.ap) == (0, 2, 0, 0, 0, 0)
    m = match_labels(z, gt)
    assert (m.fp, m.ap) == (2, 0)


def test_literal_iou_and_threshold_edges():
    gt = np.array([[1, 1, 1, 1, 0, 0]])
    pred = np.array([[2, 2, 2, 0, 0, 0]])  # IoU 3/4
    assert match_labels(gt, pred, 0.75).tp == 1  # IoU >= thresh counts
    assert match_labels(gt, pred, 0.8).tp == 0
    assert match_labels(gt, pred, 0.75).mean_matched_iou == pytest.approx(0.75)
    g, p, iou = match_pairs(gt, pred, 0.75)
    assert (g.tolist(), p.tolist(), iou.tolist()) == ([1], [2], [0.75])
    res = evaluate_pair(gt, pred)
    assert res["ap@0.75"] == 1 and res["ap@0.8"] == 0
    assert res["mAP"] == pytest.approx(6 / 10)  # 0.5..0.75 hit: 6 of 10 thresholds


def test_splits_and_merges():
    gt = np.array([[1, 1, 1, 1, 0, 2, 2, 0, 3, 3]])
    pred = np.array([[4, 4, 5, 5, 0, 6, 6, 6, 6, 6]])  # gt1 split, gt2+gt3 merged
    r = match_labels(gt, pred)
    assert (r.splits, r.merges) == (1, 1)


def test_optimal_not_greedy_at_low_threshold():
    # greedy by best IoU matches g1-p7 (0.5) and leaves g2 unmatched; optimal: g1-p8 (0.33), g2-p7 (0.25)
    gt = np.array([[1, 1, 1, 1, 1, 1, 2, 2, 2, 2]])
    pred = np.array([[8, 8, 7, 7, 7, 7, 7, 7, 0, 0]])
    ov = label_overlap(gt, pred)
    assert ov.n_true == 2 and ov.n_pred == 2
    assert match_labels(gt, pred, 0.2).tp == dense_lsa_tp(gt, pred, 0.2) == 2


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        match_labels(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="thresh"):
        match_labels(np.zeros((3, 3), int), np.zeros((3, 3), int), thresh=0)
    with pytest.raises(ValueError, match="gt"):
        match_labels(np.full((3, 3), 0.5), np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="negative"):
        match_labels(np.zeros((3, 3), int), -np.ones((3, 3), int))
    with pytest.raises(ValueError, match="thresholds"):
        evaluate_pair(np.zeros((3, 3), int), np.zeros((3, 3), int), thresholds=[])


def test_3d_and_float_labels():
    gt = disk_labels((20, 32, 32), centers=((10, 10, 10), (10, 22, 22)), radii=(5, 6))
    pred = np.roll(gt, 1, axis=0).astype(np.float32)
    r = match_labels(gt, pred, 0.5)
    assert r.tp == 2 and 0.5 < r.mean_matched_iou < 1


def test_symmetry_and_invariants():
    gt = random_disk_labels((128, 128), n=25, seed=1)
    pred = perturb_labels(gt, seed=2)
    for thr in DEFAULT_THRESHOLDS:
        a, b = match_labels(gt, pred, thr), match_labels(pred, gt, thr)
        assert (a.tp, a.fp, a.fn) == (b.tp, b.fn, b.fp)
        assert a.splits == b.merges and a.merges == b.splits
        assert a.tp + a.fn == a.n_true and a.tp + a.fp == a.n_pred
    tps = [r.tp for r in evaluate_pair(gt, pred)["per_threshold"].values()]
    assert tps == sorted(tps, reverse=True)  # monotone in the threshold


def test_random_low_thresholds_match_dense_hungarian():
    for seed in range(4):
        gt = random_disk_labels((96, 96), n=15, rmin=5, rmax=9, seed=seed)
        pred = perturb_labels(gt, seed=seed, erode=2, merge_frac=0.3)
        for thr in (0.1, 0.3, 0.5):
            assert match_labels(gt, pred, thr).tp == dense_lsa_tp(gt, pred, thr)


# ---------------------------------------------------------------- aggregation and leaderboard
def test_aggregate_micro_average():
    gt = random_disk_labels((96, 96), n=10, seed=3)
    r1 = evaluate_pair(gt, perturb_labels(gt, seed=1))
    r2 = evaluate_pair(gt, gt)
    agg = aggregate([r1, r2])
    for thr in DEFAULT_THRESHOLDS:
        a, b, s = r1["per_threshold"][thr], r2["per_threshold"][thr], agg["per_threshold"][thr]
        assert (s.tp, s.fp, s.fn) == (a.tp + b.tp, a.fp + b.fp, a.fn + b.fn)
        assert s.ap == pytest.approx(s.tp / (s.tp + s.fp + s.fn))
    assert agg["n_images"] == 2
    assert agg["mAP"] == pytest.approx(np.mean([agg[f"ap@{t:g}"] for t in DEFAULT_THRESHOLDS]))
    single = aggregate([MatchResult.from_counts(0.5, 1, 1, 1)])
    assert single["f1@0.5"] == pytest.approx(0.5)


def test_leaderboard_ranks_combinations():
    rows = []
    for img_seed in range(3):
        gt = random_disk_labels((96, 96), n=10, seed=img_seed)
        preds = {("raw", "good"): gt, ("raw", "bad"): perturb_labels(gt, seed=img_seed, erode=3),
                 ("blur", "mid"): perturb_labels(gt, seed=img_seed, erode=1, merge_frac=0)}
        for (pipe, model), p in preds.items():
            rows += evaluation_rows(evaluate_pair(gt, p), image=f"im{img_seed}", pipeline=pipe, model=model)
    df = pd.DataFrame(rows)
    lb = leaderboard(df)
    assert list(lb["model"]) == ["good", "mid", "bad"]
    assert list(lb["rank"]) == [1, 2, 3]
    assert (lb["n_images"] == 3).all() and lb.loc[0, "mAP"] == 1.0
    assert {"f1@0.5", "ap@0.5", "mAP", "mean_matched_iou", "splits", "merges", "f1@0.5_image_mean"} <= set(lb.columns)
    lb2 = leaderboard(df, by=["pipeline"], sort_by="f1@0.5")
    assert list(lb2["pipeline"]) == ["raw", "blur"] or list(lb2["pipeline"]) == ["blur", "raw"]
    with pytest.raises(ValueError, match="sort_by"):
        leaderboard(df, sort_by="nope")
    with pytest.raises(ValueError, match="tp"):
        leaderboard(df.drop(columns="tp"))


# ---------------------------------------------------------------- speed
def test_fast_on_thousands_of_objects():
    cell = np.zeros((30, 30), np.int64)
    cell[3:27, 3:27] = 1
    n = 70  # 4900 objects, 2100 x 2100 pixels
    gt = (np.kron(np.arange(1, n * n + 1).reshape(n, n), np.ones((30, 30), np.int64)) * np.tile(cell, (n, n)))
    pred = np.roll(gt, (2, 3), axis=(0, 1))
    t = time.perf_counter()
    res = evaluate_pair(gt, pred)
    r01 = match_labels(gt, pred, 0.1)
    dt = time.perf_counter() - t
    assert res["per_threshold"][0.5].tp == n * n and res["per_threshold"][0.95].tp == 0
    assert r01.tp == n * n
    assert dt < 10, f"evaluation of {n * n} objects took {dt:.1f}s"


# ---------------------------------------------------------------- real data
def _dsb_val(shared_data: Path) -> list[Path]:
    files = sorted((shared_data / "dsb2018" / "val" / "masks").glob("*.tif"))
    if not files:
        pytest.skip("dsb2018 val masks missing")
    return files


def test_matches_brute_force_on_dsb2018_val(shared_data):
    total_tp = 0
    for k, f in enumerate(_dsb_val(shared_data)):
        gt = tifffile.imread(f)
        pred = perturb_labels(gt, seed=k, erode=1 + k % 2, shift=(k % 3, 1), merge_frac=0.1)
        ious = brute_force_ious(gt, pred)
        ov = label_overlap(gt, pred)
        assert len(ious) == ov.pair_iou.size
        ref = {(int(ov.true_ids[a]), int(ov.pred_ids[b])): v for a, b, v in zip(ov.pair_true, ov.pair_pred, ov.pair_iou)}
        assert ref.keys() == ious.keys()
        assert np.allclose([ref[k_] for k_ in ious], list(ious.values()))
        res = evaluate_pair(gt, pred, thresholds=(0.5, 0.6, 0.7, 0.8, 0.9))
        for thr, r in res["per_threshold"].items():
            tp, s = greedy_unique_tp(ious, thr)
            # ties at exactly thr are counted by match_labels (>=), not by the reference (>)
            ties = sum(1 for v in ious.values() if v == thr)
            assert tp <= r.tp <= tp + ties, (f.name, thr)
            if ties == 0:
                assert r.sum_matched_iou == pytest.approx(s)
            total_tp += r.tp
        r = res["per_threshold"][0.5]
        assert r.n_true == len(np.unique(gt)) - 1 and r.n_pred == len(np.unique(pred)) - 1
    assert total_tp > 0


def test_gt_against_itself_on_real_data(shared_data):
    for f in _dsb_val(shared_data)[:5]:
        gt = tifffile.imread(f)
        res = evaluate_pair(gt, gt)
        assert res["mAP"] == 1.0 and res["splits"] == 0 and res["merges"] == 0


# ---------------------------------------------------------------- CLI
def test_cli_evaluate_folders(tmp_path):
    from opsef_orchestrator.cli import cli

    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for combo in ("raw/stardist", "blur/cellpose"):
        (pred_dir / combo).mkdir(parents=True)
    gt_dir.mkdir()
    for i in range(2):
        gt = random_disk_labels((64, 64), n=6, seed=i)
        tifffile.imwrite(gt_dir / f"img{i}_masks.tif", gt.astype(np.uint16))
        tifffile.imwrite(pred_dir / "raw/stardist" / f"img{i}_labels.tif", gt.astype(np.uint16))
        tifffile.imwrite(pred_dir / "blur/cellpose" / f"img{i}_labels.tif",
                         perturb_labels(gt, seed=i, erode=2).astype(np.uint16))
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["evaluate", str(pred_dir), str(gt_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    lb = pd.read_csv(out / "leaderboard.csv")
    assert lb.loc[0, "combination"] == "raw/stardist" and lb.loc[0, "mAP"] == 1.0
    assert lb.loc[0, "pipeline"] == "raw" and lb.loc[0, "model"] == "stardist"
    per = pd.read_csv(out / "evaluation_per_image.csv")
    assert set(per["image"]) == {"img0", "img1"} and len(per) == 2 * 2 * len(DEFAULT_THRESHOLDS)
    assert "raw/stardist" in res.output

    # single files, european dialect
    res = CliRunner().invoke(cli, ["evaluate", str(pred_dir / "raw/stardist/img0_labels.tif"),
                                   str(gt_dir / "img0_masks.tif"), "--out", str(out / "one"), "--european",
                                   "--thresholds", "0.5,0.75"])
    assert res.exit_code == 0, res.output
    txt = (out / "one" / "leaderboard.csv").read_text()
    assert ";" in txt.splitlines()[0]
    # nothing matched by name: clear error
    (tmp_path / "other").mkdir()
    tifffile.imwrite(tmp_path / "other" / "zzz.tif", np.zeros((4, 4), np.uint16))
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "other"), str(gt_dir)])
    assert res.exit_code != 0 and "no prediction" in res.output.lower()
