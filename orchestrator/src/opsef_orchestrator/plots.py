"""Analysis plots of object tables: scatter with filter box, PCA / t-SNE, clustering.

Figures are :class:`matplotlib.figure.Figure` objects on the Agg canvas (no
pyplot); turn them into PNG bytes with :func:`opsef_orchestrator.overlays.figure_to_png`.

Examples
--------
>>> import pandas as pd
>>> t = pd.DataFrame({"area": [10, 20, 30, 40], "circularity": [0.9, 0.8, 0.5, 0.95], "class": [0, 1, 0, 1]})
>>> fig = scatter_plot(t, "area", "circularity", color_by="class", ranges={"area": (15, None)})
>>> len(fig.axes)
1
>>> embed(t, ["area", "circularity"], method="pca").shape
(4, 2)
"""
from __future__ import annotations

import logging
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["feature_matrix", "embed", "cluster", "scatter_plot", "embedding_plot"]

logger = logging.getLogger(__name__)


def _one_thread():
    """Run scikit-learn single-threaded: OpenMP spin-waiting makes t-SNE/k-means on small
    tables many times slower on busy machines with few cores."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def feature_matrix(table: pd.DataFrame, columns: Sequence[str], standardise: bool = True) -> np.ndarray:
    """Numeric matrix of the chosen columns (rows with NaN/inf get column means; z-scored if asked)."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"columns not in the table: {missing}")
    if len(columns) < 1:
        raise ValueError("columns must name at least one property")
    x = table[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    x[~np.isfinite(x)] = np.nan
    if x.size:
        col_mean = np.array([np.nanmean(c) if np.isfinite(c).any() else 0.0 for c in x.T])
        x = np.where(np.isnan(x), col_mean[None, :], x)
        if standardise:
            sd = x.std(axis=0)
            x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    return x


def embed(
    table: pd.DataFrame,
    columns: Sequence[str],
    method: Literal["pca", "tsne"] = "pca",
    n_components: int = 2,
    standardise: bool = True,
    random_state: int = 0,
    perplexity: float = 30.0,
) -> np.ndarray:
    """2D (or nD) embedding of chosen properties by PCA or t-SNE (scikit-learn).

    t-SNE's perplexity is lowered to ``(n - 1) / 3`` for small tables. Tables
    with fewer than 2 (PCA) / 4 (t-SNE) rows give zeros.
    """
    x = feature_matrix(table, columns, standardise)
    n = x.shape[0]
    if method == "pca":
        from sklearn.decomposition import PCA

        if n < 2:
            return np.zeros((n, n_components))
        k = min(n_components, x.shape[1], n)
        with _one_thread():
            y = PCA(n_components=k, random_state=random_state).fit_transform(x)
        return np.pad(y, ((0, 0), (0, n_components - k)))
    if method == "tsne":
        from sklearn.manifold import TSNE

        if n < 4:
            return np.zeros((n, n_components))
        perp = float(min(perplexity, max((n - 1) / 3.0, 1.0)))
        with _one_thread():
            return TSNE(n_components=n_components, perplexity=perp, random_state=random_state,
                        init="pca" if x.shape[1] >= n_components else "random").fit_transform(x)
    raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")


def cluster(
    table: pd.DataFrame, columns: Sequence[str], n_clusters: int = 3, standardise: bool = True,
    random_state: int = 0,
) -> np.ndarray:
    """Automatic clustering (k-means) of chosen properties: cluster id per row (0..k-1)."""
    from sklearn.cluster import KMeans

    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    x = feature_matrix(table, columns, standardise)
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    k = min(n_clusters, n)
    with _one_thread():
        return KMeans(n_clusters=k, n_init=10, random_state=random_state).fit_predict(x).astype(np.int64)


def _colour_values(table: pd.DataFrame, color_by: str | None) -> tuple[np.ndarray | None, list[Any]]:
    if color_by is None:
        return None, []
    if color_by not in table.columns:
        raise ValueError(f"color_by names the column {color_by!r}, which the table lacks")
    cats = list(pd.unique(table[color_by]))
    try:
        cats = sorted(cats)
    except TypeError:
        pass
    return table[color_by].to_numpy(), cats


def _new_fig(size=(5.0, 4.0)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _scatter_groups(ax, x, y, values, cats, label_prefix: str = "") -> None:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    if values is None:
        ax.scatter(x, y, s=10, alpha=0.7, color=cmap(0))
        return
    for k, c in enumerate(cats):
        sel = values == c
        ax.scatter(x[sel], y[sel], s=10, alpha=0.7, color=cmap(k % 10), label=f"{label_prefix}{c}")
    if cats:
        ax.legend(fontsize=7, markerscale=1.5, loc="best")


def scatter_plot(
    table: pd.DataFrame,
    x: str,
    y: str,
    color_by: str | None = None,
    ranges: Mapping[str, Any] | None = None,
    title: str | None = None,
    logx: bool = False,
    logy: bool = False,
):
    """Scatter of two properties, coloured by a class/cluster column, with the filter box drawn.

    Parameters
    ----------
    table : DataFrame
    x, y : str
        Columns to plot.
    color_by : str, optional
        Column of categories (class, cluster, image, ...).
    ranges : dict, optional
        Filter ranges ``{column: (min, max)}``; the ranges of ``x`` and ``y``
        are drawn as a dashed box (open bounds extend to the axes).
    """
    from matplotlib.patches import Rectangle

    from .postprocess import parse_ranges

    for c in (x, y):
        if c not in table.columns:
            raise ValueError(f"column {c!r} is not in the table")
    values, cats = _colour_values(table, color_by)
    fig, ax = _new_fig()
    xv = pd.to_numeric(table[x], errors="coerce").to_numpy(dtype=float)
    yv = pd.to_numeric(table[y], errors="coerce").to_numpy(dtype=float)
    _scatter_groups(ax, xv, yv, values, cats, f"{color_by}=" if color_by else "")
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    r = parse_ranges(ranges)
    if x in r or y in r:
        ax.autoscale_view()
        x0, x1 = ax.get_xlim()
        y0, y1 = ax.get_ylim()
        lx, hx = r.get(x, (-np.inf, np.inf))
        ly, hy = r.get(y, (-np.inf, np.inf))
        bx0, bx1 = max(lx, x0), min(hx, x1)
        by0, by1 = max(ly, y0), min(hy, y1)
        ax.add_patch(Rectangle((bx0, by0), bx1 - bx0, by1 - by0, fill=False, ls="--", lw=1.2, ec="black",
                               label="filter"))
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title or f"{y} vs {x} (n={len(table)})", fontsize=10)
    fig.tight_layout()
    return fig


def embedding_plot(
    table: pd.DataFrame,
    columns: Sequence[str],
    method: Literal["pca", "tsne"] = "pca",
    color_by: str | None = "cluster",
    n_clusters: int = 3,
    random_state: int = 0,
    title: str | None = None,
):
    """PCA or t-SNE map of chosen properties, coloured by a column or by k-means clusters.

    ``color_by="cluster"`` (when the table has no ``cluster`` column) clusters
    the same properties automatically.
    """
    emb = embed(table, columns, method=method, random_state=random_state)
    t = table
    if color_by == "cluster" and "cluster" not in table.columns:
        t = table.assign(cluster=cluster(table, columns, n_clusters, random_state=random_state))
    values, cats = _colour_values(t, color_by)
    fig, ax = _new_fig()
    _scatter_groups(ax, emb[:, 0], emb[:, 1], values, cats, f"{color_by}=" if color_by else "")
    name = "PCA" if method == "pca" else "t-SNE"
    ax.set_xlabel(f"{name} 1")
    ax.set_ylabel(f"{name} 2")
    ax.set_title(title or f"{name} of {', '.join(columns)} (n={len(table)})", fontsize=9)
    fig.tight_layout()
    return fig
