"""Image preparation and tiled prediction on a fixed input tile size (numpy only).

The network always sees tiles of ``tile x tile`` pixels. Larger images are
cut into overlapping tiles whose probabilities are blended with a weight that
falls off towards tile edges; smaller images (and image borders) are padded by
reflection, so any image size works.

Examples
--------
>>> import numpy as np
>>> fn = lambda batch: np.repeat(batch, 3, axis=-1)       # stand-in "network"
>>> out = predict_tiled(fn, np.random.rand(37, 41, 1).astype(np.float32), tile=16, overlap=4)
>>> out.shape
(37, 41, 3)
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from opsef_protocol.adapter import percentile_normalize, to_channels_last

__all__ = ["prepare_image", "tile_starts", "tile_weight", "predict_tiled"]

logger = logging.getLogger(__name__)


def prepare_image(image: np.ndarray, axes: str, channels: int = 1, normalize: bool = True,
                  low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Turn a YX / YXC image into the network input ``(Y, X, channels)`` float32.

    RGB(A) images become grey (mean of the first three channels) for a
    1-channel network; with ``normalize`` the ``low``/``high`` percentiles map
    to 0/1 (the same normalisation the training command uses).
    """
    img = to_channels_last(image, axes, channels)
    if normalize:
        img = percentile_normalize(img, low, high)
    return np.ascontiguousarray(img, dtype=np.float32)


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``n >= tile`` pixels with at least ``overlap`` overlap.

    Examples
    --------
    >>> tile_starts(256, 256, 32), tile_starts(300, 256, 32), tile_starts(695, 256, 32)
    ([0], [0, 44], [0, 220, 439])
    """
    if n < tile:
        raise ValueError(f"axis of {n} pixels is smaller than the tile ({tile})")
    if n == tile:
        return [0]
    step = max(1, tile - overlap)
    count = int(np.ceil((n - tile) / step)) + 1
    return [int(round(i * (n - tile) / (count - 1))) for i in range(count)]


def tile_weight(tile: int, overlap: int) -> np.ndarray:
    """Blending weight of one tile: 1 in the middle, a linear ramp over ``overlap`` pixels at the edges (never 0)."""
    if overlap <= 0:
        return np.ones((tile, tile), np.float32)
    d = np.minimum(np.arange(tile), np.arange(tile)[::-1]).astype(np.float32)
    ramp = np.clip((d + 1.0) / (overlap + 1.0), 1e-3, 1.0)
    return np.outer(ramp, ramp).astype(np.float32)


def _pad(image: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    pads = [(0, max(0, t - n)) for n, t in zip(image.shape[:2], target)] + [(0, 0)] * (image.ndim - 2)
    if not any(p[1] for p in pads):
        return image
    mode = "reflect" if min(image.shape[:2]) > 1 else "edge"
    return np.pad(image, pads, mode=mode)


def predict_tiled(predict_batch: Callable[[np.ndarray], np.ndarray], image: np.ndarray, tile: int = 256,
                  overlap: int = 32, batch_size: int = 4) -> np.ndarray:
    """Run ``predict_batch`` on overlapping ``tile x tile`` tiles of ``image`` and blend the results.

    Parameters
    ----------
    predict_batch : callable
        Maps a ``(B, tile, tile, C)`` float32 batch to ``(B, tile, tile, K)`` probabilities.
    image : ndarray
        ``(Y, X, C)`` float32 network input of any size.
    tile, overlap : int
        Tile size (what the network is run on) and the minimum overlap of neighbouring tiles.
    batch_size : int
        Tiles per call of ``predict_batch``.

    Returns
    -------
    ndarray
        ``(Y, X, K)`` float32 probabilities of the input's size.
    """
    if image.ndim != 3:
        raise ValueError(f"expected a (Y, X, C) image, got shape {image.shape}")
    h, w = image.shape[:2]
    padded = _pad(image, (max(h, tile), max(w, tile)))
    ph, pw = padded.shape[:2]
    weight = tile_weight(tile, overlap)
    boxes = [(y, x) for y in tile_starts(ph, tile, overlap) for x in tile_starts(pw, tile, overlap)]
    out: np.ndarray | None = None
    norm = np.zeros((ph, pw), np.float32)
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i:i + batch_size]
        batch = np.stack([padded[y:y + tile, x:x + tile] for y, x in chunk])
        probs = np.asarray(predict_batch(batch), dtype=np.float32)
        if out is None:
            out = np.zeros((ph, pw, probs.shape[-1]), np.float32)
        for (y, x), p in zip(chunk, probs):
            out[y:y + tile, x:x + tile] += p * weight[..., None]
            norm[y:y + tile, x:x + tile] += weight
    assert out is not None
    logger.debug("predicted %d tiles of %d px for an image of %dx%d", len(boxes), tile, h, w)
    return (out / norm[..., None])[:h, :w]
