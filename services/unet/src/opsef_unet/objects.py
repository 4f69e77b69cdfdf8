"""The object step: class probabilities -> instance labels (numpy / scipy / scikit-image only).

After optional Gaussian smoothing (``smooth_sigma``), foreground is where
``p_interior + boundary_weight * p_boundary`` exceeds ``foreground_threshold``;
seeds come from the interior class (its distance transform, thresholded at
``distance_threshold``, or its local maxima at least ``min_distance`` apart); a
watershed on ``1 - p_interior`` grows the seeds over the foreground;
foreground pieces without a seed become objects of their own; objects smaller
than ``min_size`` pixels are removed.

Examples
--------
>>> import numpy as np
>>> prob = np.zeros((20, 20, 3), np.float32); prob[..., 0] = 1
>>> prob[5:10, 5:10] = [0, 1, 0]
>>> int(probabilities_to_labels(prob).max())
1
"""
from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from scipy import ndimage

from opsef_protocol.adapter import relabel_sequential

__all__ = ["SEED_MODES", "DEFAULT_OBJECT_PARAMS", "probabilities_to_labels", "remove_small_objects"]

logger = logging.getLogger(__name__)

#: How seeds are made from the interior class.
SEED_MODES = ("components", "peaks")
#: Object-step defaults when neither the request nor the manifest sets them.
DEFAULT_OBJECT_PARAMS: dict[str, float | int] = {
    "boundary_weight": 1.0,
    "foreground_threshold": 0.5,
    "distance_threshold": 0.0,
    "min_size": 0,
}


def remove_small_objects(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Remove objects of fewer than ``min_size`` pixels and relabel 1..N (uint32).

    Examples
    --------
    >>> remove_small_objects(np.array([[1, 1, 0, 2]]), 2).tolist()
    [[1, 1, 0, 0]]
    """
    labels = np.asarray(labels)
    if min_size > 1 and labels.size and labels.max() > 0:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        labels = np.where(small[labels], 0, labels)
    return relabel_sequential(labels)


def probabilities_to_labels(prob: np.ndarray, boundary_weight: float = 1.0, foreground_threshold: float = 0.5,
                            distance_threshold: float = 0.0, min_size: int = 0,
                            seed_mode: Literal["components", "peaks"] = "components",
                            min_distance: int = 3, smooth_sigma: float = 0.0) -> np.ndarray:
    """Turn ``(Y, X, 3)`` background / interior / boundary probabilities into instance labels.

    Parameters
    ----------
    prob : ndarray
        ``(Y, X, 3)`` probabilities (channels: background, interior, boundary).
    boundary_weight : float
        Weight of the boundary probability when deciding foreground.
    foreground_threshold : float
        Foreground = ``p_interior + boundary_weight * p_boundary > foreground_threshold``.
    distance_threshold : float
        Seeds need at least this distance (pixels) from the interior's edge:
        ``components`` seeds are the connected parts of the interior eroded by
        it, ``peaks`` seeds are maxima of the interior distance above it.
    min_size : int
        Objects with fewer pixels are removed.
    seed_mode : {"components", "peaks"}
        ``components`` (interior pieces separated by the boundary class, the
        CellProfiler 3.0 way) or ``peaks`` (distance-transform maxima at least
        ``min_distance`` apart, which also splits merged interiors).
    min_distance : int
        Minimum distance between ``peaks`` seeds.
    smooth_sigma : float
        Gaussian smoothing (pixels) of the probabilities first, against
        fragmented interiors (0 = none).

    Returns
    -------
    ndarray of uint32
        Labels 1..N, 0 = background.
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 3 or prob.shape[-1] != 3:
        raise ValueError(f"expected (Y, X, 3) probabilities, got shape {prob.shape}")
    if seed_mode not in SEED_MODES:
        raise ValueError(f"seed_mode must be one of {SEED_MODES}, got {seed_mode!r}")
    if smooth_sigma > 0:
        prob = ndimage.gaussian_filter(prob, (smooth_sigma, smooth_sigma, 0))
    p_bg, p_in, p_bd = prob[..., 0], prob[..., 1], prob[..., 2]
    foreground = (p_in + boundary_weight * p_bd) > foreground_threshold
    if not foreground.any():
        return np.zeros(prob.shape[:2], np.uint32)
    interior = foreground & (p_in > p_bd) & (p_in > p_bg)
    dist = ndimage.distance_transform_edt(interior)
    if seed_mode == "components":
        markers, n = ndimage.label(dist > distance_threshold)
    else:
        regions, _ = ndimage.label(interior)
        smooth = ndimage.gaussian_filter(dist, 1.0)
        peaks = peak_local_max(smooth, min_distance=max(1, int(min_distance)), threshold_abs=distance_threshold,
                               labels=regions, exclude_border=False)
        markers = np.zeros(prob.shape[:2], np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        n = len(peaks)
    # Foreground pieces without a seed (tiny or boundary-only objects) become objects of their own.
    pieces, n_pieces = ndimage.label(foreground)
    seeded = np.zeros(n_pieces + 1, bool)
    seeded[pieces[markers > 0]] = True
    orphan = foreground & ~seeded[pieces]
    markers = markers.astype(np.int32)
    markers[orphan] = pieces[orphan] + n
    labels = watershed(1.0 - p_in, markers, mask=foreground)
    labels = remove_small_objects(labels, int(min_size))
    logger.debug("object step: %d seeds, %d objects", n, int(labels.max()))
    return labels
