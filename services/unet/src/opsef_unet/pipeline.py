"""The full segmentation path shared by the adapter and the training command's evaluation.

image -> grey / normalise -> rescale -> tiled network -> object step ->
labels resized to the input -> size cleanup. Framework-free: the network is a
``predict_batch`` callable.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from opsef_protocol.adapter import percentile_normalize, rescale_image, resize_labels
from opsef_unet.objects import DEFAULT_OBJECT_PARAMS, probabilities_to_labels, remove_small_objects
from opsef_unet.processing import predict_tiled, prepare_image

__all__ = ["DEFAULT_PARAMS", "DEFAULT_OPTIONS", "probabilities", "segment_image", "labels_from_probabilities"]

logger = logging.getLogger(__name__)

#: Segment parameter defaults used where neither the request nor the manifest sets one.
DEFAULT_PARAMS: dict[str, Any] = {
    **DEFAULT_OBJECT_PARAMS,
    "scale": 1.0,
    "normalize": True,
    "norm_percentile_low": 1.0,
    "norm_percentile_high": 99.8,
}
#: Manifest ``options`` defaults.
DEFAULT_OPTIONS: dict[str, Any] = {
    "tile_size": 256,
    "tile_overlap": 32,
    "tile_batch": 4,
    "seed_mode": "components",
    "min_distance": 3,
    "smooth_sigma": 0.0,
}


def probabilities(predict_batch: Callable[[np.ndarray], np.ndarray], image: np.ndarray, axes: str,
                  params: dict[str, Any], options: dict[str, Any], channels: int = 1) -> np.ndarray | None:
    """Class probabilities ``(Y', X', 3)`` at the scaled size, or None for an image without contrast."""
    p = {**DEFAULT_PARAMS, **params}
    o = {**DEFAULT_OPTIONS, **options}
    spatial = image.shape[:2]
    img = prepare_image(image, axes, channels, False)
    if float(img.max()) == float(img.min()):
        logger.info("image %s has no contrast: no objects", spatial)
        return None
    if p["normalize"]:
        img = percentile_normalize(img, p["norm_percentile_low"], p["norm_percentile_high"])
    img = rescale_image(img, float(p["scale"]), 2)
    return predict_tiled(predict_batch, img, int(o["tile_size"]), int(o["tile_overlap"]), int(o["tile_batch"]))


def labels_from_probabilities(prob: np.ndarray | None, shape: tuple[int, int], params: dict[str, Any],
                              options: dict[str, Any]) -> np.ndarray:
    """Object step on probabilities, labels resized to ``shape``, then ``min_size`` cleanup (input pixels)."""
    if prob is None:
        return np.zeros(shape, np.uint32)
    p = {**DEFAULT_PARAMS, **params}
    o = {**DEFAULT_OPTIONS, **options}
    labels = probabilities_to_labels(
        prob,
        boundary_weight=float(p["boundary_weight"]),
        foreground_threshold=float(p["foreground_threshold"]),
        distance_threshold=float(p["distance_threshold"]),
        min_size=0,
        seed_mode=o["seed_mode"],
        min_distance=int(o["min_distance"]),
        smooth_sigma=float(o["smooth_sigma"]),
    )
    labels = resize_labels(labels, tuple(shape))
    return remove_small_objects(labels, int(p["min_size"]))


def segment_image(predict_batch: Callable[[np.ndarray], np.ndarray], image: np.ndarray, axes: str,
                  params: dict[str, Any], options: dict[str, Any], channels: int = 1) -> np.ndarray:
    """Instance labels (uint32) of a YX / YXC image, of the image's spatial shape.

    Parameters
    ----------
    predict_batch : callable
        ``(B, tile, tile, C)`` float32 -> ``(B, tile, tile, 3)`` probabilities.
    image : ndarray
        YX or YXC image.
    axes : str
        ``"YX"`` or ``"YXC"``.
    params : dict
        Segment parameters (missing ones take :data:`DEFAULT_PARAMS`).
    options : dict
        Manifest options (tile size, overlap, seed mode, ...).
    channels : int
        Network input channels.
    """
    if axes not in ("YX", "YXC"):
        raise ValueError(f"the U-Net is 2D: axes must be YX or YXC, got {axes!r}")
    prob = probabilities(predict_batch, image, axes, params, options, channels)
    return labels_from_probabilities(prob, image.shape[:2], params, options)
