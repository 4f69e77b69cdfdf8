"""Synthetic 3D nuclei volumes (ZYX) for training the OpSeF StarDist 3D starter model.

Nuclei are ellipsoids of varied size, elongation and in-plane orientation,
flatter along Z (anisotropic sampling), packed densely enough that many touch;
a voxel claimed by two ellipsoids goes to the one whose surface is farther
(normalised distance), which gives flat, star-convex contact faces. The image is
per-nucleus brightness with texture and a dimmer rim, an uneven background,
anisotropic blur, shot-like and Gaussian noise. ``thin=True`` makes volumes only
a few planes deep in which nuclei are cut by the top and bottom planes (like
short confocal stacks), edge-padded in Z to ``min_z`` the way the service pads
small inputs.

The orchestrator has its own simpler generator; the service does not import it.
"""
from __future__ import annotations

import logging
import math

import numpy as np

__all__ = ["synthetic_volume", "synthetic_dataset"]

logger = logging.getLogger(__name__)


def _smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, sigma: tuple[float, ...]) -> np.ndarray:
    from scipy import ndimage

    n = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), sigma)
    return n / (n.std() + 1e-6)


def synthetic_volume(
    shape: tuple[int, int, int] = (32, 96, 96),
    rng: np.random.Generator | None = None,
    radius_xy: tuple[float, float] = (4.0, 11.0),
    anisotropy: tuple[float, float] = (1.5, 2.8),
    density: tuple[float, float] = (0.15, 0.4),
    thin: bool = False,
    min_z: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic volume of nuclei and its labels.

    Parameters
    ----------
    shape
        ZYX shape of the volume (for ``thin=True`` the Z size is drawn from 4..8 instead).
    rng
        Random generator; a fresh unseeded one if None.
    radius_xy
        Range of the mean XY semi-axis of a volume's nuclei, in pixels; each nucleus varies ±25 % around it.
    anisotropy
        Range of XY over Z semi-axis ratio (nuclei look that much flatter along Z).
    density
        Range of the fraction of the volume covered by nuclei.
    thin
        Make a stack only 4-8 planes deep with nuclei cut by its first and last plane, edge-padded to ``min_z``.
    min_z
        Z size that thin volumes are edge-padded to (image and labels alike).

    Returns
    -------
    image, labels
        ``float32`` image scaled to roughly 0..1 (before noise) and ``uint16`` labels 1..N.
    """
    from scipy import ndimage

    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be 3D (ZYX) with every side >= 4, got {shape}")
    rng = rng if rng is not None else np.random.default_rng()
    if thin:
        shape = (int(rng.integers(4, 9)), shape[1], shape[2])
    r_mean = rng.uniform(*radius_xy)
    aniso = rng.uniform(*anisotropy)
    target = rng.uniform(*density) * math.prod(shape)

    best = np.full(shape, np.inf, np.float32)  # normalised distance of the claiming nucleus
    labels = np.zeros(shape, np.uint16)
    covered, label = 0.0, 0
    for _ in range(400):
        if covered >= target or label >= 60000:
            break
        rxy = r_mean * rng.uniform(0.75, 1.25)
        ry, rx = rxy * rng.uniform(0.85, 1.2), rxy * rng.uniform(0.7, 1.0)
        rz = max(1.5, rxy / aniso * rng.uniform(0.8, 1.2))
        if thin:
            rz = max(rz, shape[0] * rng.uniform(0.5, 0.9))  # cut by the stack's ends
        c = np.array([rng.uniform(0, shape[0]) if not thin else rng.uniform(0.3, 0.7) * shape[0],
                      rng.uniform(-0.3 * ry, shape[1] + 0.3 * ry), rng.uniform(-0.3 * rx, shape[2] + 0.3 * rx)])
        # Skip a centre that lies deep inside an existing nucleus (touching is fine).
        ci = tuple(int(np.clip(round(v), 0, s - 1)) for v, s in zip(c, shape))
        if best[ci] < 0.8:
            continue
        theta = rng.uniform(0, np.pi)
        tilt = rng.normal(0, 0.1)
        r_max = max(ry, rx)
        lo = [max(0, int(c[0] - rz - 1)), max(0, int(c[1] - r_max - 1)), max(0, int(c[2] - r_max - 1))]
        hi = [min(shape[0], int(c[0] + rz + 2)), min(shape[1], int(c[1] + r_max + 2)), min(shape[2], int(c[2] + r_max + 2))]
        if any(h <= l for l, h in zip(lo, hi)):
            continue
        zz, yy, xx = np.meshgrid(*[np.arange(l, h, dtype=np.float32) for l, h in zip(lo, hi)], indexing="ij")
        dz, dy, dx = zz - c[0], yy - c[1], xx - c[2]
        u = np.cos(theta) * dy + np.sin(theta) * dx
        v = -np.sin(theta) * dy + np.cos(theta) * dx
        dz = dz + tilt * u  # slight tilt out of the XY plane
        d = np.sqrt((dz / rz) ** 2 + (u / ry) ** 2 + (v / rx) ** 2)
        box = tuple(slice(l, h) for l, h in zip(lo, hi))
        inside = d < 1.0
        if not inside.any():
            continue
        # Reject nuclei that would mostly vanish under existing ones.
        claim = inside & (d < best[box])
        if claim.sum() < 0.6 * inside.sum() or claim.sum() < 8:
            continue
        label += 1
        labels[box][claim] = label
        best[box][claim] = d[claim]
        covered += float(claim.sum())

    # Drop fragments: keep the largest connected piece of each label.
    if label:
        for i, sl in enumerate(ndimage.find_objects(labels), start=1):
            if sl is None:
                continue
            m = labels[sl] == i
            cc, n = ndimage.label(m)
            if n > 1:
                sizes = np.bincount(cc.ravel())[1:]
                labels[sl][m & (cc != 1 + int(np.argmax(sizes)))] = 0
        from skimage.segmentation import relabel_sequential

        labels = relabel_sequential(labels)[0].astype(np.uint16)
    n = int(labels.max())

    bright = np.concatenate([[0.0], rng.uniform(0.35, 1.0, n)]).astype(np.float32)
    rim = rng.uniform(0.0, 0.5)
    fg = bright[labels] * (1.0 - rim * np.clip(best, 0, 1) ** 2)
    texture = rng.uniform(0.0, 0.35)
    if texture > 0:
        fg = fg * np.clip(1.0 + texture * _smooth_noise(shape, rng, (0.7, 1.5, 1.5)), 0.2, None)
    if thin and rng.random() < 0.7:  # dimmer towards one end of the stack, as in deep confocal planes
        fade = np.linspace(1.0, rng.uniform(0.3, 0.8), shape[0], dtype=np.float32)
        fg = fg * (fade if rng.random() < 0.5 else fade[::-1])[:, None, None]
    background = rng.uniform(0.0, 0.3) + rng.uniform(0.0, 0.15) * _smooth_noise(shape, rng, (4.0, 16.0, 16.0))
    img = fg + np.clip(background, 0, None)
    img = ndimage.gaussian_filter(img, (rng.uniform(0.3, 1.5), rng.uniform(0.3, 1.2), rng.uniform(0.3, 1.2)))
    if rng.random() < 0.5:  # shot noise
        photons = rng.uniform(20, 300)
        img = rng.poisson(np.clip(img, 0, None) * photons).astype(np.float32) / photons
    img = img + rng.normal(0, rng.uniform(0.01, 0.3), shape).astype(np.float32)
    img = img.astype(np.float32)
    if thin and shape[0] < min_z:
        pad = ((0, min_z - shape[0]), (0, 0), (0, 0))
        img, labels = np.pad(img, pad, mode="edge"), np.pad(labels, pad, mode="edge")
    return img, labels


def synthetic_dataset(
    n: int,
    seed: int,
    shape: tuple[int, int, int] = (32, 96, 96),
    thin_fraction: float = 0.25,
    min_z: int = 16,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` volumes from :func:`synthetic_volume`, a ``thin_fraction`` of them thin stacks.

    Examples
    --------
    >>> X, Y = synthetic_dataset(2, seed=0, shape=(16, 48, 48))
    >>> len(X), X[0].shape == Y[0].shape, int(Y[0].max()) > 0
    (2, True, True)
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 <= thin_fraction <= 1.0:
        raise ValueError(f"thin_fraction must be in [0, 1], got {thin_fraction}")
    rng = np.random.default_rng(seed)
    n_thin = int(round(n * thin_fraction))
    X, Y = [], []
    for i in range(n):
        x, y = synthetic_volume(shape, rng, thin=i < n_thin, min_z=min_z)
        X.append(x)
        Y.append(y)
    logger.debug("synthetic 3D dataset: %d volumes, %d thin, %d nuclei", n, n_thin, sum(int(y.max()) for y in Y))
    return X, Y
