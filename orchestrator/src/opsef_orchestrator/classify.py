"""Classification of objects by a mask (user-provided, or made from a second channel).

Classes are integers: 0 = outside every mask region ("negative"), k > 0 = the
value of the mask (a boolean mask gives class 1 = "positive"). Objects are
assigned by their centroid (the mask value at the rounded centroid) or by the
fraction of their pixels that overlap a class (the largest one, if it reaches
``min_fraction``).

Examples
--------
>>> import numpy as np
>>> lab = np.zeros((6, 6), int); lab[:2, :2] = 1; lab[4:, 4:] = 2
>>> mask = np.zeros((6, 6), bool); mask[3:, 3:] = True
>>> classify_objects(lab, mask).to_dict()
{1: 0, 2: 1}
"""
from __future__ import annotations

import logging
from typing import Literal, Mapping

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage import filters, morphology

__all__ = ["mask_from_channel", "classify_objects", "add_classes", "class_image", "THRESHOLD_METHODS"]

logger = logging.getLogger(__name__)

THRESHOLD_METHODS = {
    "otsu": filters.threshold_otsu,
    "li": filters.threshold_li,
    "triangle": filters.threshold_triangle,
    "yen": filters.threshold_yen,
    "mean": filters.threshold_mean,
    "isodata": filters.threshold_isodata,
}


def mask_from_channel(
    image: np.ndarray,
    filter: Literal["gaussian", "median", "none"] | None = "gaussian",
    sigma: float = 1.0,
    method: str | float = "otsu",
    factor: float = 1.0,
    opening: int = 0,
    closing: int = 0,
    fill_holes: bool = True,
    min_size: int = 0,
) -> np.ndarray:
    """Make a boolean mask from a (second) channel: filter, threshold x factor, morphology.

    Parameters
    ----------
    image : ndarray, 2D or 3D
        The channel.
    filter : {"gaussian", "median", "none"}
        Smoothing before thresholding (``sigma``: Gaussian sigma or median radius).
    method : str or float
        Automatic threshold (``otsu``, ``li``, ``triangle``, ``yen``, ``mean``,
        ``isodata``) or a fixed value.
    factor : float
        The threshold is multiplied by this (e.g. 1.2 = stricter).
    opening, closing : int
        Radius of a binary opening / closing (0 = none).
    fill_holes : bool
        Fill holes in the mask.
    min_size : int
        Remove mask components smaller than this (pixels).

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((10, 10)); img[2:8, 2:8] = 10
    >>> int(mask_from_channel(img, filter="none").sum())
    36
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be 2D or 3D, got shape {img.shape}")
    if filter == "gaussian" and sigma > 0:
        img = ndi.gaussian_filter(img, sigma)
    elif filter == "median" and sigma > 0:
        fp = morphology.disk(int(round(sigma))) if img.ndim == 2 else morphology.ball(int(round(sigma)))
        img = ndi.median_filter(img, footprint=fp)
    elif filter not in (None, "none", "gaussian", "median"):
        raise ValueError(f"filter must be 'gaussian', 'median' or 'none', got {filter!r}")
    if isinstance(method, str):
        if method not in THRESHOLD_METHODS:
            raise ValueError(f"method must be a number or one of {sorted(THRESHOLD_METHODS)}, got {method!r}")
        thr = float(THRESHOLD_METHODS[method](img)) if np.ptp(img) > 0 else float(img.max())
    else:
        thr = float(method)
    thr *= float(factor)
    mask = img > thr
    ball = morphology.disk if img.ndim == 2 else morphology.ball
    if opening:
        mask = ndi.binary_opening(mask, structure=ball(int(opening)))
    if closing:
        mask = ndi.binary_closing(mask, structure=ball(int(closing)))
    if fill_holes:
        mask = ndi.binary_fill_holes(mask)
    if min_size:
        mask = morphology.remove_small_objects(mask, min_size=int(min_size))
    logger.debug("mask threshold %.4g (method %s x %g): %d pixels", thr, method, factor, int(mask.sum()))
    return mask


def classify_objects(
    labels: np.ndarray,
    mask: np.ndarray,
    by: Literal["centroid", "overlap"] = "overlap",
    min_fraction: float = 0.5,
) -> pd.Series:
    """Class of each object from a mask: a Series indexed by label id.

    Parameters
    ----------
    labels : ndarray of int
        Objects (2D or 3D).
    mask : ndarray of bool or int
        Boolean mask (class 1 inside) or class image (0 = none, k = class k),
        same shape as ``labels``.
    by : {"centroid", "overlap"}
        ``centroid``: mask value at the rounded centroid; ``overlap``: the class
        covering the largest fraction of the object, if >= ``min_fraction``.
    min_fraction : float
        In [0, 1], for ``by="overlap"``.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.array([[1, 1, 1, 1]]); m = np.array([[0, 2, 2, 2]])
    >>> classify_objects(lab, m, "overlap", 0.8).tolist(), classify_objects(lab, m, "overlap", 0.7).tolist()
    ([0], [2])
    """
    labels = np.asarray(labels)
    mask = np.asarray(mask)
    if mask.shape != labels.shape:
        raise ValueError(f"mask shape {mask.shape} differs from labels shape {labels.shape}")
    if not 0 <= min_fraction <= 1:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
    if not (mask.dtype == bool or np.issubdtype(mask.dtype, np.integer)):
        raise ValueError(f"mask must be boolean or integer classes, got dtype {mask.dtype}")
    cls_img = mask.astype(np.int64)
    if cls_img.size and cls_img.min() < 0:
        raise ValueError("mask has negative classes")
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0:
        return pd.Series([], index=pd.Index([], name="label", dtype=np.int64), name="class", dtype=np.int64)
    if by == "centroid":
        cents = np.array(ndi.center_of_mass(np.ones(labels.shape), labels, ids)).reshape(len(ids), -1)
        idx = tuple(np.clip(np.round(cents[:, d]).astype(int), 0, labels.shape[d] - 1) for d in range(labels.ndim))
        classes = cls_img[idx]
    elif by == "overlap":
        fg = labels > 0
        lab = labels[fg].astype(np.int64)
        cl = cls_img[fg]
        ncls = int(cl.max()) + 1 if cl.size else 1
        uid, inv = np.unique(lab, return_inverse=True)
        counts = np.bincount(inv.ravel() * ncls + cl, minlength=uid.size * ncls).reshape(uid.size, ncls)
        frac = counts / counts.sum(axis=1, keepdims=True)
        frac[:, 0] = -1  # background is not a class to win
        best = frac.argmax(axis=1)
        ok = frac[np.arange(uid.size), best] >= min_fraction
        classes = np.where(ok & (ncls > 1), best, 0)
    else:
        raise ValueError(f"by must be 'centroid' or 'overlap', got {by!r}")
    return pd.Series(classes.astype(np.int64), index=pd.Index(ids.astype(np.int64), name="label"), name="class")


def add_classes(
    table: pd.DataFrame,
    labels: np.ndarray,
    mask: np.ndarray,
    by: Literal["centroid", "overlap"] = "overlap",
    min_fraction: float = 0.5,
    column: str = "class",
    class_names: Mapping[int, str] | None = None,
) -> pd.DataFrame:
    """A copy of ``table`` with a ``column`` of classes (and ``column + "_name"`` if names are given)."""
    if "label" not in table.columns:
        raise ValueError("table must have a 'label' column")
    cls = classify_objects(labels, mask, by=by, min_fraction=min_fraction)
    out = table.copy()
    out[column] = out["label"].map(cls).fillna(0).astype(np.int64)
    if class_names is not None:
        out[f"{column}_name"] = out[column].map(lambda c: class_names.get(int(c), str(c)))
    return out


def class_image(labels: np.ndarray, classes: Mapping[int, int] | pd.Series) -> np.ndarray:
    """Image of classes: each object painted with its class (objects without class -> 0).

    Examples
    --------
    >>> import numpy as np
    >>> class_image(np.array([[0, 1, 2]]), {1: 3, 2: 1}).tolist()
    [[0, 3, 1]]
    """
    labels = np.asarray(labels)
    cls = pd.Series(classes)
    lut = np.zeros(int(max(labels.max(initial=0), cls.index.max() if len(cls) else 0)) + 1, np.int64)
    lut[cls.index.to_numpy(dtype=np.int64)] = cls.to_numpy(dtype=np.int64)
    return lut[labels]
