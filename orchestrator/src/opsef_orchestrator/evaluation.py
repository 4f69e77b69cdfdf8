"""Instance segmentation accuracy: object matching, per-image scores, leaderboards.

Conventions (the DSB2018 / StarDist ones, as in ``stardist.matching``):

* Objects are matched one-to-one by **optimal assignment** (Hungarian,
  :func:`scipy.optimize.linear_sum_assignment`) among ground-truth/prediction
  pairs with IoU >= ``thresh``; among assignments with the same number of
  matches the one with the highest total IoU wins. For ``thresh >= 0.5`` a pair
  with IoU > 0.5 is always unique, so the result equals greedy matching there.
* ``precision = TP/(TP+FP)``, ``recall = TP/(TP+FN)``,
  ``f1 = 2TP/(2TP+FP+FN)`` and **``ap = TP/(TP+FP+FN)``** (the "average
  precision" of the DSB2018 challenge and StarDist, which is really a critical
  success index, *not* the area under a precision/recall curve).
* ``mAP`` is the mean of ``ap`` over the IoU thresholds 0.5, 0.55, ..., 0.95.
* ``mean_matched_iou`` is the mean IoU of the matched pairs (0 if none).
* When both images are empty every score is 1 (perfect agreement); when only
  one is empty the scores are 0.
* Splits and merges do not depend on the threshold: a ground-truth object is
  *split* when >= 2 predicted objects lie mostly inside it (more than
  ``overlap_frac`` of the predicted object's pixels); a predicted object is a
  *merge* when >= 2 ground-truth objects lie mostly inside it.

IoUs are computed sparsely from the joint histogram of label pairs (only
overlapping pairs are stored), and the assignment is solved separately on each
connected component of the candidate-pair graph, so images with thousands of
objects take milliseconds.

Examples
--------
>>> import numpy as np
>>> gt = np.zeros((6, 6), int); gt[:3, :3] = 1; gt[3:, 3:] = 2
>>> pred = np.zeros((6, 6), int); pred[:3, :2] = 5
>>> r = match_labels(gt, pred, thresh=0.5)
>>> (r.tp, r.fp, r.fn, round(r.mean_matched_iou, 3))
(1, 0, 1, 0.667)
>>> round(evaluate_pair(gt, pred)["ap@0.5"], 2)
0.5
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

__all__ = [
    "DEFAULT_THRESHOLDS",
    "MatchResult",
    "LabelOverlap",
    "label_overlap",
    "match_labels",
    "match_pairs",
    "evaluate_pair",
    "aggregate",
    "evaluation_rows",
    "leaderboard",
]

logger = logging.getLogger(__name__)

#: IoU thresholds 0.5, 0.55, ..., 0.95 (rounded, usable as dict keys).
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

#: counts that are summed when aggregating over images (micro-average).
_COUNT_COLUMNS = ("tp", "fp", "fn", "n_true", "n_pred", "splits", "merges", "sum_matched_iou")


@dataclass(frozen=True)
class MatchResult:
    """Scores of one ground-truth/prediction comparison at one IoU threshold.

    ``ap`` is TP/(TP+FP+FN) (DSB2018/StarDist convention).
    """

    thresh: float
    tp: int
    fp: int
    fn: int
    n_true: int
    n_pred: int
    precision: float
    recall: float
    f1: float
    ap: float
    mean_matched_iou: float
    splits: int
    merges: int
    sum_matched_iou: float = 0.0

    @property
    def panoptic_quality(self) -> float:
        """Panoptic quality: sum of matched IoUs / (TP + FP/2 + FN/2)."""
        d = self.tp + 0.5 * self.fp + 0.5 * self.fn
        return 1.0 if d == 0 else self.sum_matched_iou / d

    def as_dict(self) -> dict[str, Any]:
        """Plain dict of all fields (for tables)."""
        return asdict(self)

    @classmethod
    def from_counts(
        cls,
        thresh: float,
        tp: int,
        fp: int,
        fn: int,
        sum_matched_iou: float = 0.0,
        splits: int = 0,
        merges: int = 0,
    ) -> "MatchResult":
        """Build a result (all derived scores) from counts.

        Examples
        --------
        >>> MatchResult.from_counts(0.5, tp=3, fp=1, fn=0).ap
        0.75
        """
        tp, fp, fn = int(tp), int(fp), int(fn)
        n_true, n_pred = tp + fn, tp + fp
        if n_true == 0 and n_pred == 0:
            precision = recall = f1 = ap = 1.0
        else:
            precision = tp / n_pred if n_pred else 0.0
            recall = tp / n_true if n_true else 0.0
            f1 = 2 * tp / (2 * tp + fp + fn)
            ap = tp / (tp + fp + fn)
        return cls(
            thresh=float(thresh), tp=tp, fp=fp, fn=fn, n_true=n_true, n_pred=n_pred,
            precision=precision, recall=recall, f1=f1, ap=ap,
            mean_matched_iou=float(sum_matched_iou) / tp if tp else 0.0,
            splits=int(splits), merges=int(merges), sum_matched_iou=float(sum_matched_iou),
        )


def _as_labels(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == bool:
        return x.astype(np.uint8)
    if not np.issubdtype(x.dtype, np.integer):
        if np.issubdtype(x.dtype, np.floating) and np.all(np.mod(x, 1) == 0):
            x = x.astype(np.int64)
        else:
            raise ValueError(f"{name} must be an integer label image, got dtype {x.dtype}")
    if x.size and x.min() < 0:
        raise ValueError(f"{name} has negative labels")
    return x


def _index(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label ids (nonzero, sorted) and per-pixel index 0 (background) .. n."""
    flat = x.ravel()
    mx = int(flat.max(initial=0))
    if mx <= max(4 * flat.size, 1 << 20):  # O(N) look-up table instead of sorting
        present = np.bincount(flat, minlength=mx + 1)
        ids = np.flatnonzero(present[1:]) + 1
        lut = np.zeros(mx + 1, np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return ids.astype(x.dtype), lut[flat]
    ids, inv = np.unique(flat, return_inverse=True)
    inv = inv.ravel()
    if ids.size and ids[0] == 0:
        return ids[1:], inv
    return ids, inv + 1


@dataclass(frozen=True)
class LabelOverlap:
    """Sparse overlap of two label images (only pairs that touch are stored).

    Attributes
    ----------
    true_ids, pred_ids : label values of the objects (index k <-> id ``ids[k]``).
    true_area, pred_area : pixel counts per object.
    pair_true, pair_pred : object indices (0-based) of each overlapping pair.
    pair_inter, pair_iou : intersection (pixels) and IoU of each pair.
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_area: np.ndarray
    pred_area: np.ndarray
    pair_true: np.ndarray
    pair_pred: np.ndarray
    pair_inter: np.ndarray
    pair_iou: np.ndarray

    @property
    def n_true(self) -> int:
        return int(self.true_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)


def label_overlap(gt: np.ndarray, pred: np.ndarray) -> LabelOverlap:
    """Sparse pairwise IoU of the objects of two label images (2D or 3D).

    Parameters
    ----------
    gt, pred : ndarray of int
        Label images of the same shape, 0 = background. Labels need not be
        sequential.

    Returns
    -------
    LabelOverlap

    Examples
    --------
    >>> import numpy as np
    >>> ov = label_overlap(np.array([[1, 1, 0, 2]]), np.array([[3, 3, 3, 0]]))
    >>> ov.pair_iou.round(3).tolist(), ov.pred_ids.tolist()
    ([0.667], [3])
    """
    gt = _as_labels(gt, "gt")
    pred = _as_labels(pred, "pred")
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred shapes differ: {gt.shape} vs {pred.shape}")
    tid, ti = _index(gt)
    pid, pi = _index(pred)
    nt, npd = tid.size, pid.size
    tarea = np.bincount(ti, minlength=nt + 1)[1:]
    parea = np.bincount(pi, minlength=npd + 1)[1:]
    fg = (ti > 0) & (pi > 0)
    a = ti[fg].astype(np.int64) - 1
    b = pi[fg].astype(np.int64) - 1
    if nt * npd <= 2_000_000:  # dense joint histogram is cheap
        hist = np.bincount(a * npd + b, minlength=nt * npd) if a.size else np.zeros(nt * npd, np.int64)
        key = np.flatnonzero(hist)
        inter = hist[key].astype(np.int64)
        pt, pp = (key // npd, key % npd) if npd else (key, key)
    else:  # sparse joint histogram: duplicates summed by the COO -> CSR conversion
        m = sparse.coo_matrix((np.ones(a.size, np.int64), (a, b)), shape=(nt, npd)).tocsr()
        m.sum_duplicates()
        c = m.tocoo()
        pt, pp, inter = c.row.astype(np.int64), c.col.astype(np.int64), c.data.astype(np.int64)
    iou = inter / (tarea[pt] + parea[pp] - inter)
    return LabelOverlap(tid, pid, tarea, parea, pt.astype(np.int64), pp.astype(np.int64), inter, iou)


def _assign(ov: LabelOverlap, thresh: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal one-to-one matching among pairs with IoU >= thresh: (true idx, pred idx, iou)."""
    cand = ov.pair_iou >= thresh
    if thresh <= 0:
        raise ValueError(f"thresh must be > 0, got {thresh}")
    ct, cp, ci = ov.pair_true[cand], ov.pair_pred[cand], ov.pair_iou[cand]
    if ct.size == 0:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0)
    # fast path: pairs whose true and pred objects have no other candidate
    t_deg = np.bincount(ct, minlength=ov.n_true)
    p_deg = np.bincount(cp, minlength=ov.n_pred)
    simple = (t_deg[ct] == 1) & (p_deg[cp] == 1)
    mt, mp, mi = [ct[simple]], [cp[simple]], [ci[simple]]
    if not simple.all():
        ct, cp, ci = ct[~simple], cp[~simple], ci[~simple]
        ut, rt = np.unique(ct, return_inverse=True)
        up, rp = np.unique(cp, return_inverse=True)
        n = ut.size + up.size
        g = sparse.coo_matrix((np.ones(ct.size), (rt.ravel(), ut.size + rp.ravel())), shape=(n, n))
        ncomp, comp = connected_components(g, directed=False)
        ct_comp = comp[rt.ravel()]
        for c in range(ncomp):
            sel = ct_comp == c
            rows, r_inv = np.unique(rt.ravel()[sel], return_inverse=True)
            cols, c_inv = np.unique(rp.ravel()[sel], return_inverse=True)
            scores = np.zeros((rows.size, cols.size))
            scores[r_inv.ravel(), c_inv.ravel()] = ci[sel]
            n_matched = min(rows.size, cols.size)
            costs = -(scores >= thresh).astype(float) - scores / (2 * n_matched)
            r, k = linear_sum_assignment(costs)
            ok = scores[r, k] >= thresh
            mt.append(ut[rows[r[ok]]])
            mp.append(up[cols[k[ok]]])
            mi.append(scores[r[ok], k[ok]])
    return np.concatenate(mt), np.concatenate(mp), np.concatenate(mi)


def _splits_merges(ov: LabelOverlap, overlap_frac: float) -> tuple[int, int]:
    # pred object j lies mostly inside true object i
    inside_true = ov.pair_inter > overlap_frac * ov.pred_area[ov.pair_pred]
    splits = int(np.count_nonzero(np.bincount(ov.pair_true[inside_true], minlength=ov.n_true) >= 2))
    inside_pred = ov.pair_inter > overlap_frac * ov.true_area[ov.pair_true]
    merges = int(np.count_nonzero(np.bincount(ov.pair_pred[inside_pred], minlength=ov.n_pred) >= 2))
    return splits, merges


def _result(ov: LabelOverlap, thresh: float, sm: tuple[int, int]) -> MatchResult:
    _, _, mi = _assign(ov, thresh)
    tp = int(mi.size)
    return MatchResult.from_counts(thresh, tp, ov.n_pred - tp, ov.n_true - tp, float(mi.sum()), *sm)


def match_labels(
    gt: np.ndarray | LabelOverlap, pred: np.ndarray | None = None, thresh: float = 0.5,
    overlap_frac: float = 0.5,
) -> MatchResult:
    """Match the objects of a prediction to ground truth at one IoU threshold.

    Parameters
    ----------
    gt, pred : ndarray of int
        Label images (2D or 3D, same shape, 0 = background). ``gt`` may also be
        a precomputed :class:`LabelOverlap` (then ``pred`` is ignored).
    thresh : float
        Minimum IoU of a match, in (0, 1].
    overlap_frac : float
        Fraction of an object that must lie inside another for the split/merge
        counts (see the module notes).

    Returns
    -------
    MatchResult
        ``ap`` is TP/(TP+FP+FN) (DSB2018/StarDist convention).

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.array([[1, 1, 1, 1, 1, 1, 0, 2, 2]])
    >>> pred = np.array([[1, 1, 2, 2, 3, 3, 0, 0, 0]])   # gt 1 split in three, gt 2 missed
    >>> r = match_labels(gt, pred, 0.5)
    >>> (r.tp, r.fp, r.fn, r.splits, r.merges, r.ap)
    (0, 3, 2, 1, 0, 0.0)
    """
    if not 0 < thresh <= 1:
        raise ValueError(f"thresh must be in (0, 1], got {thresh}")
    ov = gt if isinstance(gt, LabelOverlap) else label_overlap(gt, pred)  # type: ignore[arg-type]
    return _result(ov, thresh, _splits_merges(ov, overlap_frac))


def match_pairs(
    gt: np.ndarray, pred: np.ndarray, thresh: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The matched object pairs: (gt label ids, pred label ids, IoUs).

    Examples
    --------
    >>> import numpy as np
    >>> match_pairs(np.array([[1, 1, 0, 2]]), np.array([[7, 7, 0, 0]]))[:2]
    (array([1]), array([7]))
    """
    if not 0 < thresh <= 1:
        raise ValueError(f"thresh must be in (0, 1], got {thresh}")
    ov = label_overlap(gt, pred)
    t, p, i = _assign(ov, thresh)
    return ov.true_ids[t], ov.pred_ids[p], i


def _summary(per: Mapping[float, MatchResult]) -> dict[str, float]:
    out: dict[str, float] = {}
    for thr, r in per.items():
        out[f"f1@{thr:g}"] = r.f1
        out[f"ap@{thr:g}"] = r.ap
    out["mAP"] = float(np.mean([r.ap for r in per.values()])) if per else float("nan")
    first = per[min(per)] if per else None
    if first is not None:
        out["precision"] = first.precision
        out["recall"] = first.recall
        out["mean_matched_iou"] = first.mean_matched_iou
        out["panoptic_quality"] = first.panoptic_quality
        out["splits"] = first.splits
        out["merges"] = first.merges
        out["n_true"] = first.n_true
        out["n_pred"] = first.n_pred
    return out


def _check_thresholds(thresholds: Iterable[float]) -> tuple[float, ...]:
    ths = tuple(round(float(t), 4) for t in thresholds)
    if not ths or any(not 0 < t <= 1 for t in ths):
        raise ValueError(f"thresholds must be non-empty values in (0, 1], got {ths}")
    return ths


def evaluate_pair(
    gt: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    overlap_frac: float = 0.5,
) -> dict[str, Any]:
    """Scores of one prediction against ground truth at several IoU thresholds.

    Parameters
    ----------
    gt, pred : ndarray of int
        Label images (same shape).
    thresholds : sequence of float
        IoU thresholds (default 0.5, 0.55, ..., 0.95).
    overlap_frac : float
        See :func:`match_labels`.

    Returns
    -------
    dict
        ``"per_threshold"``: {thresh: MatchResult}; summary keys
        ``"f1@T"``, ``"ap@T"`` for each threshold T, ``"mAP"`` (mean ap over the
        thresholds), and at the lowest threshold ``"precision"``, ``"recall"``,
        ``"mean_matched_iou"``, ``"panoptic_quality"``, plus ``"splits"``,
        ``"merges"``, ``"n_true"``, ``"n_pred"``.

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.zeros((8, 8), int); gt[1:5, 1:5] = 1
    >>> res = evaluate_pair(gt, gt)
    >>> res["mAP"], res["f1@0.5"], sorted(res["per_threshold"])[:2]
    (1.0, 1.0, [0.5, 0.55])
    """
    ths = _check_thresholds(thresholds)
    ov = label_overlap(gt, pred)
    sm = _splits_merges(ov, overlap_frac)
    per = {t: _result(ov, t, sm) for t in ths}
    return {"per_threshold": per, **_summary(per)}


def aggregate(results: Iterable[Mapping[str, Any] | MatchResult]) -> dict[str, Any]:
    """Micro-average over images: sum TP/FP/FN (and splits, merges) per threshold.

    Parameters
    ----------
    results : iterable
        Outputs of :func:`evaluate_pair` (dicts) or :class:`MatchResult` objects.

    Returns
    -------
    dict
        Same layout as :func:`evaluate_pair`, plus ``"n_images"``.

    Examples
    --------
    >>> a = MatchResult.from_counts(0.5, 1, 0, 1); b = MatchResult.from_counts(0.5, 3, 1, 0)
    >>> agg = aggregate([a, b]); (agg["per_threshold"][0.5].tp, agg["ap@0.5"], agg["n_images"])
    (4, 0.6666666666666666, 2)
    """
    sums: dict[float, dict[str, float]] = {}
    images: set[int] = set()
    n = 0
    for k, res in enumerate(results):
        items = [res] if isinstance(res, MatchResult) else list(res["per_threshold"].values())
        n += 1
        images.add(k)
        for r in items:
            s = sums.setdefault(round(r.thresh, 4), dict.fromkeys(_COUNT_COLUMNS, 0.0))
            for c in _COUNT_COLUMNS:
                s[c] += getattr(r, c)
    per = {
        t: MatchResult.from_counts(t, s["tp"], s["fp"], s["fn"], s["sum_matched_iou"], s["splits"], s["merges"])
        for t, s in sorted(sums.items())
    }
    return {"per_threshold": per, **_summary(per), "n_images": n}


def evaluation_rows(result: Mapping[str, Any], **ids: Any) -> list[dict[str, Any]]:
    """Long-format rows (one per threshold) of an :func:`evaluate_pair` result.

    Keyword arguments (e.g. ``image=``, ``pipeline=``, ``model=``) are copied
    into every row; feed the concatenated rows of many images and combinations
    to :func:`leaderboard`.

    Examples
    --------
    >>> import numpy as np
    >>> rows = evaluation_rows(evaluate_pair(np.ones((2, 2), int), np.ones((2, 2), int), [0.5]),
    ...                        image="a", model="m")
    >>> rows[0]["image"], rows[0]["tp"], rows[0]["f1"]
    ('a', 1, 1.0)
    """
    return [{**ids, **r.as_dict()} for r in result["per_threshold"].values()]


_METRIC_COLUMNS = {f.name for f in fields(MatchResult)} | {"panoptic_quality"}


def leaderboard(
    df: pd.DataFrame, by: Sequence[str] | None = None, sort_by: str = "mAP", image_column: str = "image"
) -> pd.DataFrame:
    """Rank combinations (e.g. pipeline x model) by micro-averaged accuracy.

    Parameters
    ----------
    df : DataFrame
        Long table, one row per image x combination x threshold, as made by
        :func:`evaluation_rows`: count columns ``tp``, ``fp``, ``fn``, ``thresh``
        (and optionally ``sum_matched_iou``, ``splits``, ``merges``), plus the
        identifying columns.
    by : sequence of str, optional
        Columns that identify a combination; default: every column that is not
        a metric and not ``image_column``.
    sort_by : str
        Ranking metric (descending): ``"mAP"``, ``"f1@0.5"``, ``"ap@0.5"``, ...
    image_column : str
        Column naming the image (counted in ``n_images``).

    Returns
    -------
    DataFrame
        One row per combination: ``rank``, the ``by`` columns, ``n_images``,
        ``n_true``, ``n_pred``, ``tp``/``fp``/``fn`` at the lowest threshold,
        ``precision``, ``recall``, ``f1@T``/``ap@T`` per threshold, ``mAP``,
        ``mean_matched_iou``, ``panoptic_quality``, ``splits``, ``merges``, and
        ``f1@0.5_image_mean`` (macro average over images) when images are known.

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.zeros((6, 6), int); gt[:3, :3] = 1; gt[3:, 3:] = 2
    >>> rows = evaluation_rows(evaluate_pair(gt, gt, [0.5]), image="x", model="good")
    >>> rows += evaluation_rows(evaluate_pair(gt, gt * (gt == 1), [0.5]), image="x", model="bad")
    >>> leaderboard(pd.DataFrame(rows))[["rank", "model", "f1@0.5"]].values.tolist()
    [[1, 'good', 1.0], [2, 'bad', 0.6666666666666666]]
    """
    for col in ("tp", "fp", "fn"):
        if col not in df.columns:
            raise ValueError(f"df lacks the column {col!r} (build it with evaluation_rows)")
    df = df.copy()
    if "thresh" not in df.columns:
        df["thresh"] = 0.5
    df["thresh"] = df["thresh"].astype(float).round(4)
    for col in ("sum_matched_iou", "splits", "merges"):
        if col not in df.columns:
            df[col] = 0
    if by is None:
        by = [c for c in df.columns if c not in _METRIC_COLUMNS and c != image_column]
    by = list(by)
    missing = [c for c in by if c not in df.columns]
    if missing:
        raise ValueError(f"by names columns not in df: {missing}")
    out_rows: list[dict[str, Any]] = []
    groups = df.groupby(by, dropna=False, sort=False) if by else [((), df)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        per: dict[float, MatchResult] = {}
        for thr, gt_ in g.groupby("thresh"):
            s = gt_[list(_COUNT_COLUMNS)].sum()
            per[float(thr)] = MatchResult.from_counts(
                float(thr), s["tp"], s["fp"], s["fn"], s["sum_matched_iou"], s["splits"], s["merges"]
            )
        lo = per[min(per)]
        row: dict[str, Any] = dict(zip(by, key))
        row["n_images"] = int(g[image_column].nunique()) if image_column in g.columns else 1
        row.update(n_true=lo.n_true, n_pred=lo.n_pred, tp=lo.tp, fp=lo.fp, fn=lo.fn)
        row.update(_summary(per))
        if image_column in g.columns and 0.5 in per:
            f1s = g[g["thresh"] == 0.5]
            f1 = [MatchResult.from_counts(0.5, r.tp, r.fp, r.fn).f1 for r in f1s.itertuples()]
            row["f1@0.5_image_mean"] = float(np.mean(f1)) if f1 else float("nan")
        out_rows.append(row)
    out = pd.DataFrame(out_rows)
    if out.empty:
        return out
    if sort_by not in out.columns:
        raise ValueError(f"sort_by {sort_by!r} is not a leaderboard column: {list(out.columns)}")
    out = out.sort_values(sort_by, ascending=False, kind="stable").reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out
