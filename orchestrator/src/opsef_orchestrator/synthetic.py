"""Synthetic nuclei images with known labels, for the demo without real data and for tests.

Examples
--------
>>> img, lab = synthetic_nuclei((64, 64), n=5, seed=1)
>>> img.dtype.name, lab.dtype.name, int(lab.max()) <= 5
('uint16', 'uint32', True)
"""
from __future__ import annotations

import numpy as np

__all__ = ["synthetic_nuclei", "synthetic_nuclei_3d"]


def synthetic_nuclei(
    shape: tuple[int, int] = (256, 256),
    n: int = 30,
    radius: tuple[float, float] = (5.0, 10.0),
    seed: int = 0,
    noise: float = 0.05,
    blur: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A fluorescence-like 2D image of non-overlapping elliptical nuclei and its uint32 labels.

    Parameters
    ----------
    shape : (int, int)
        Image size.
    n : int
        Nuclei to try to place (fewer if they do not fit without overlap).
    radius : (float, float)
        Range of semi-axes in pixels.
    seed : int
        Random seed; the same seed gives the same image.
    noise, blur : float
        Gaussian noise (fraction of the signal) and blur sigma.

    Returns
    -------
    image : ndarray of uint16
    labels : ndarray of uint32
    """
    from scipy import ndimage

    if len(shape) != 2 or min(shape) < 4:
        raise ValueError(f"shape must be 2D and at least 4x4, got {shape}")
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    label = 0
    for _ in range(n * 20):
        if label >= n:
            break
        a, b = rng.uniform(*radius, size=2)
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        t = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(t) + dy * np.sin(t)) / a
        v = (-dx * np.sin(t) + dy * np.cos(t)) / b
        mask = u * u + v * v <= 1
        grown = ndimage.binary_dilation(mask, iterations=2)
        if not mask.any() or (labels[grown] > 0).any():
            continue
        label += 1
        labels[mask] = label
    signal = np.zeros(shape, np.float32)
    if label:
        brightness = rng.uniform(0.5, 1.0, size=label + 1)
        brightness[0] = 0.05
        signal = brightness[labels].astype(np.float32)
    signal = ndimage.gaussian_filter(signal, blur) if blur > 0 else signal
    signal = signal + rng.normal(0, noise, shape).astype(np.float32)
    image = np.clip(signal * 3000 + 200, 0, 65535).astype(np.uint16)
    return image, labels


def synthetic_nuclei_3d(
    shape: tuple[int, int, int] = (32, 96, 96),
    n: int = 12,
    radius: tuple[float, float] = (4.0, 8.0),
    seed: int = 0,
    noise: float = 0.05,
    anisotropy: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A 3D (ZYX) image of non-overlapping ellipsoidal nuclei and its uint32 labels.

    ``anisotropy`` is the Z spacing over the XY spacing: nuclei look that much
    flatter along Z.
    """
    from scipy import ndimage

    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(f"shape must be 3D (ZYX), got {shape}")
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint32)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    label = 0
    for _ in range(n * 20):
        if label >= n:
            break
        r = rng.uniform(*radius, size=3)
        c = [rng.uniform(0, s) for s in shape]
        mask = ((zz - c[0]) * anisotropy / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1
        if not mask.any() or (labels[ndimage.binary_dilation(mask, iterations=1)] > 0).any():
            continue
        label += 1
        labels[mask] = label
    brightness = rng.uniform(0.5, 1.0, size=label + 1)
    brightness[0] = 0.05
    signal = ndimage.gaussian_filter(brightness[labels].astype(np.float32), 1.0)
    signal = signal + rng.normal(0, noise, shape).astype(np.float32)
    return np.clip(signal * 3000 + 200, 0, 65535).astype(np.uint16), labels
