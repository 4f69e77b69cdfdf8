"""Object filters by property ranges (declared in the run configuration).

A filter is a dict ``{column: (min, max)}``; ``None`` (or a missing bound)
means unbounded, bounds are inclusive. The seed paper uses this to remove
StarDist's cell-shaped false positives, e.g.
``{"area": (30, 2000), "circularity": (0.6, None)}``.

Examples
--------
>>> import numpy as np
>>> from opsef_orchestrator.measure import measure_objects
>>> lab = np.zeros((8, 8), int); lab[1:5, 1:5] = 1; lab[6, 6] = 2
>>> lab2, t2 = filter_objects(lab, measure_objects(lab), {"area": (2, None)})
>>> t2["label"].tolist(), np.unique(lab2).tolist()
([1], [0, 1])
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

__all__ = ["parse_ranges", "filter_mask", "filter_objects", "remove_labels"]

logger = logging.getLogger(__name__)

Range = tuple[float | None, float | None]


def parse_ranges(ranges: Mapping[str, Any] | None) -> dict[str, tuple[float, float]]:
    """Normalise a filter declaration to ``{column: (min, max)}`` with infinite open bounds.

    Accepts tuples/lists ``[min, max]`` (``None`` = open) or dicts ``{"min": .., "max": ..}``.

    Examples
    --------
    >>> parse_ranges({"area": [10, None], "circularity": {"min": 0.5}})
    {'area': (10.0, inf), 'circularity': (0.5, inf)}
    """
    out: dict[str, tuple[float, float]] = {}
    for col, r in (ranges or {}).items():
        if isinstance(r, Mapping):
            unknown = set(r) - {"min", "max"}
            if unknown:
                raise ValueError(f"ranges[{col!r}] has unknown keys {sorted(unknown)} (use min, max)")
            lo, hi = r.get("min"), r.get("max")
        else:
            try:
                lo, hi = r
            except (TypeError, ValueError):
                raise ValueError(f"ranges[{col!r}] must be (min, max), got {r!r}") from None
        lo_f = -math.inf if lo is None else float(lo)
        hi_f = math.inf if hi is None else float(hi)
        if math.isnan(lo_f) or math.isnan(hi_f) or lo_f > hi_f:
            raise ValueError(f"ranges[{col!r}] needs min <= max, got ({lo}, {hi})")
        out[str(col)] = (lo_f, hi_f)
    return out


def filter_mask(table: pd.DataFrame, ranges: Mapping[str, Any] | None) -> pd.Series:
    """Boolean Series: which rows of ``table`` lie inside every range (NaN values fail).

    Examples
    --------
    >>> import pandas as pd
    >>> filter_mask(pd.DataFrame({"area": [1, 5, 9]}), {"area": (2, 8)}).tolist()
    [False, True, False]
    """
    keep = pd.Series(True, index=table.index)
    for col, (lo, hi) in parse_ranges(ranges).items():
        if col not in table.columns:
            raise ValueError(f"ranges names the column {col!r}, which the table lacks (columns: {list(table.columns)})")
        v = pd.to_numeric(table[col], errors="coerce")
        keep &= (v >= lo) & (v <= hi)
    return keep


def remove_labels(labels: np.ndarray, remove: np.ndarray | list[int]) -> np.ndarray:
    """A copy of ``labels`` with the given label ids set to 0 (other ids unchanged)."""
    labels = np.asarray(labels)
    remove = np.asarray(remove, dtype=np.int64).ravel()
    if remove.size == 0:
        return labels.copy()
    out = labels.copy()
    out[np.isin(labels, remove)] = 0
    return out


def filter_objects(
    labels: np.ndarray, table: pd.DataFrame, ranges: Mapping[str, Any] | None
) -> tuple[np.ndarray, pd.DataFrame]:
    """Remove objects whose measurements fall outside ``ranges``.

    Parameters
    ----------
    labels : ndarray of int
        Label image the table was measured on.
    table : DataFrame
        Measurements with a ``label`` column (e.g. from :func:`measure_objects`).
    ranges : dict
        ``{column: (min, max)}``, inclusive, ``None`` = unbounded.

    Returns
    -------
    labels : ndarray
        Copy with the removed objects set to 0 (kept objects keep their ids).
    table : DataFrame
        The kept rows (index reset).
    """
    if "label" not in table.columns:
        raise ValueError("table must have a 'label' column")
    keep = filter_mask(table, ranges)
    removed = table.loc[~keep, "label"].to_numpy()
    logger.info("filter %s: kept %d of %d objects", dict(ranges or {}), int(keep.sum()), len(table))
    return remove_labels(labels, removed), table.loc[keep].reset_index(drop=True)
