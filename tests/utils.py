"""Synthetic images and labels for the tests (helpers appended by several areas)."""
from __future__ import annotations

import numpy as np


# --- labels helpers (issue 6: evaluation, measurements, ImageJ) ---------------------------


def disk_labels(shape: tuple[int, ...] = (64, 64), centers=((16, 16), (40, 44)), radii=(6, 9)) -> np.ndarray:
    """Label image (2D or 3D) of balls: object k+1 at ``centers[k]`` with ``radii[k]``."""
    grid = np.indices(shape)
    lab = np.zeros(shape, np.int32)
    for k, (c, r) in enumerate(zip(centers, radii)):
        d2 = sum((g - ci) ** 2 for g, ci in zip(grid, c))
        lab[(d2 <= r * r) & (lab == 0)] = k + 1
    return lab


def random_disk_labels(shape: tuple[int, int] = (256, 256), n: int = 40, rmin: int = 4, rmax: int = 10,
                       seed: int = 0) -> np.ndarray:
    """Non-overlapping random disks (later disks do not overwrite earlier ones)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape)
    lab = np.zeros(shape, np.int32)
    k = 0
    for _ in range(n * 20):
        if k == n:
            break
        r = int(rng.integers(rmin, rmax + 1))
        cy, cx = rng.integers(r, shape[0] - r), rng.integers(r, shape[1] - r)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if lab[m].any():
            continue
        k += 1
        lab[m] = k
    return lab


def perturb_labels(labels: np.ndarray, seed: int = 0, erode: int = 1, shift: tuple[int, int] = (1, 2),
                   merge_frac: float = 0.1, drop_frac: float = 0.05, n_fake: int = 3) -> np.ndarray:
    """A degraded copy of a 2D label image: eroded, shifted, some touching/near objects merged,
    some dropped, a few fake square objects added, labels shuffled."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    lab = labels.astype(np.int64).copy()
    ids = np.unique(lab)
    ids = ids[ids > 0]
    if erode:
        # erosion per object: a pixel survives when its whole neighbourhood has the same label
        mx = ndi.maximum_filter(lab, size=2 * erode + 1)
        mn = ndi.minimum_filter(lab, size=2 * erode + 1)
        lab[(mx != lab) | (mn != lab)] = 0
    lab = np.roll(lab, shift, axis=(0, 1))
    if ids.size > 2 and merge_frac > 0:
        cents = np.array(ndi.center_of_mass(np.ones_like(labels), labels, ids))
        for i in rng.choice(ids.size, max(1, int(merge_frac * ids.size)), replace=False):
            d = np.hypot(*(cents - cents[i]).T)
            d[i] = np.inf
            lab[lab == ids[i]] = ids[int(np.argmin(d))]
    if drop_frac > 0 and ids.size:
        for i in rng.choice(ids, max(1, int(drop_frac * ids.size)), replace=False):
            lab[lab == i] = 0
    nxt = int(lab.max()) + 1
    for _ in range(n_fake):
        y, x = rng.integers(0, lab.shape[0] - 6), rng.integers(0, lab.shape[1] - 6)
        lab[y:y + 5, x:x + 5] = nxt
        nxt += 1
    # shuffle label values (matching must not depend on them)
    u = np.unique(lab)
    perm = np.concatenate([[0], rng.permutation(np.arange(1, u.size)) * 3 + 7]) if u[0] == 0 else None
    if perm is not None:
        lab = perm[np.searchsorted(u, lab)]
    return lab.astype(np.int32)


# --- image helpers (issue 4: import, reshape, preprocessing) ------------------------------


def blob_image(shape: tuple[int, ...] = (64, 64), n: int = 8, radius: float = 4.0, background: float = 20.0,
               amplitude: float = 200.0, noise: float = 5.0, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    """A fluorescence-like image (2D or 3D) of gaussian blobs on a flat background with noise."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float64)
    img = np.full(shape, background, np.float64)
    for _ in range(n):
        c = [rng.uniform(radius, s - radius) for s in shape]
        d2 = sum((g - ci) ** 2 for g, ci in zip(grid, c))
        img += amplitude * np.exp(-d2 / (2 * radius ** 2))
    img += rng.normal(0, noise, shape)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(img), info.min, info.max).astype(dtype)
    return img.astype(dtype)
