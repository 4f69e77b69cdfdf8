"""Instance matching at an IoU threshold and the detection scores OpSeF reports.

A predicted object matches a ground-truth object when their IoU is at least
``threshold`` (one-to-one, greedy by IoU; above 0.5 matches are unique anyway).
Scores: precision TP/(TP+FP), recall TP/(TP+FN), F1, and AP = TP/(TP+FP+FN)
(the DSB 2018 / CellProfiler 3.0 "average precision" at one threshold).

Examples
--------
>>> import numpy as np
>>> gt = np.array([[1, 1, 0, 2, 2, 2]]); pred = np.array([[3, 3, 0, 0, 0, 4]])
>>> match_counts(gt, pred)
(1, 1, 1)
>>> scores(1, 1, 1)["ap"]
0.3333333333333333
"""
from __future__ import annotations

import logging
from typing import Iterable

import numpy as np

__all__ = ["match_counts", "scores", "dataset_scores"]

logger = logging.getLogger(__name__)


def match_counts(gt: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int]:
    """(TP, FP, FN) of ``pred`` against ``gt`` label images at IoU >= ``threshold``."""
    gt = np.asarray(gt).astype(np.int64, copy=False)
    pred = np.asarray(pred).astype(np.int64, copy=False)
    if gt.shape != pred.shape:
        raise ValueError(f"shapes differ: gt {gt.shape}, pred {pred.shape}")
    gt_ids = np.unique(gt[gt > 0])
    pred_ids = np.unique(pred[pred > 0])
    if not len(gt_ids) or not len(pred_ids):
        return 0, len(pred_ids), len(gt_ids)
    g_area = np.bincount(gt.ravel())
    p_area = np.bincount(pred.ravel())
    both = (gt > 0) & (pred > 0)
    key = gt[both] * (int(pred.max()) + 1) + pred[both]
    pairs, inter = np.unique(key, return_counts=True)
    g = pairs // (int(pred.max()) + 1)
    p = pairs % (int(pred.max()) + 1)
    iou = inter / (g_area[g] + p_area[p] - inter)
    order = np.argsort(-iou, kind="stable")
    used_g: set[int] = set()
    used_p: set[int] = set()
    tp = 0
    for i in order:
        if iou[i] < threshold:
            break
        if g[i] in used_g or p[i] in used_p:
            continue
        used_g.add(int(g[i]))
        used_p.add(int(p[i]))
        tp += 1
    return tp, len(pred_ids) - tp, len(gt_ids) - tp


def scores(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Precision, recall, F1 and AP (TP/(TP+FP+FN)) from counts (0 where undefined)."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    ap = tp / (tp + fp + fn) if tp + fp + fn else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "ap": ap, "tp": tp, "fp": fp, "fn": fn}


def dataset_scores(pairs: Iterable[tuple[np.ndarray, np.ndarray]], threshold: float = 0.5) -> dict[str, float]:
    """Scores over a data set: counts summed over all (gt, pred) image pairs, then scored."""
    tp = fp = fn = 0
    for gt, pred in pairs:
        a, b, c = match_counts(gt, pred, threshold)
        tp, fp, fn = tp + a, fp + b, fn + c
    return scores(tp, fp, fn)
