"""DSB 2018 loading, 3-class targets and augmented random crops for training (no TensorFlow).

Layout read (``../shared/data/dsb2018``): ``index.json`` and
``<split>/images/<id>.png`` (uint8, RGB(A)), ``<split>/masks/<id>.tif``
(uint16 instance labels).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
from scipy import ndimage

from opsef_unet.processing import prepare_image

__all__ = ["Sample", "load_split", "make_targets", "CropSampler"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Sample:
    """One image of a split: id, kind (fluo / he), RGB image, instance mask."""

    id: str
    kind: str
    image: np.ndarray
    mask: np.ndarray


def load_split(root: str | Path, split: str) -> list[Sample]:
    """All images of ``split`` ("train" or "val") of a DSB 2018 folder, sorted by id.

    Raises
    ------
    FileNotFoundError
        If the folder or its ``index.json`` is missing.
    """
    import imageio.v3 as iio
    import tifffile

    root = Path(root)
    index_path = root / "index.json"
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path} not found: --data must be the dsb2018 folder")
    index = json.loads(index_path.read_text(encoding="utf-8"))
    samples = []
    for image_id in sorted(k for k, v in index.items() if v["split"] == split):
        img = iio.imread(root / split / "images" / f"{image_id}.png")
        if img.ndim == 3:
            img = img[..., :3]
        mask = tifffile.imread(root / split / "masks" / f"{image_id}.tif")
        if mask.shape != img.shape[:2]:
            raise ValueError(f"{image_id}: mask shape {mask.shape} differs from image shape {img.shape[:2]}")
        samples.append(Sample(image_id, index[image_id]["kind"], img, mask))
    logger.info("loaded %d %s images from %s", len(samples), split, root)
    return samples


def make_targets(mask: np.ndarray, boundary_px: int = 2) -> np.ndarray:
    """3-class target of an instance mask: 0 background, 1 interior, 2 boundary.

    The boundary is the object pixels within ``boundary_px`` pixels
    (chessboard distance) of another label, background or a touching object;
    ``boundary_px=1`` is ``skimage.segmentation.find_boundaries(mode="inner")``.
    Touching nuclei are therefore separated by ``2 * boundary_px`` boundary pixels.

    Examples
    --------
    >>> m = np.zeros((7, 7), np.uint16); m[1:6, 1:6] = 1
    >>> make_targets(m)[3].tolist()
    [0, 2, 2, 1, 2, 2, 0]
    """
    mask = np.asarray(mask)
    objects = mask > 0
    size = 2 * max(1, boundary_px) + 1
    differs = (ndimage.maximum_filter(mask, size, mode="nearest") != mask) | (
        ndimage.minimum_filter(mask, size, mode="nearest") != mask)
    target = np.zeros(mask.shape, np.uint8)
    target[objects] = 1
    target[objects & differs] = 2
    return target


class CropSampler:
    """Random augmented crops of (image, target) pairs.

    Every image is equally likely; crops are ``crop x crop`` (images smaller
    than that are padded by reflection); augmentation: random flips, rot90 and
    a mild intensity scale / offset.

    Parameters
    ----------
    images : list of ndarray
        Network inputs ``(Y, X, C)`` float32 (already normalised).
    targets : list of ndarray
        3-class targets ``(Y, X)`` uint8.
    crop : int
        Crop size.
    seed : int
        Random seed.
    """

    def __init__(self, images: list[np.ndarray], targets: list[np.ndarray], crop: int = 128, seed: int = 0) -> None:
        self.images = [self._pad(i, crop) for i in images]
        self.targets = [self._pad(t, crop) for t in targets]
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    @staticmethod
    def _pad(a: np.ndarray, crop: int) -> np.ndarray:
        pads = [(0, max(0, crop - n)) for n in a.shape[:2]] + [(0, 0)] * (a.ndim - 2)
        return np.pad(a, pads, mode="reflect") if any(p[1] for p in pads) else a

    def sample(self, augment: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """One crop: ``(crop, crop, C)`` float32 image and ``(crop, crop)`` uint8 target."""
        rng = self.rng
        k = int(rng.integers(len(self.images)))
        img, tgt = self.images[k], self.targets[k]
        y = int(rng.integers(img.shape[0] - self.crop + 1))
        x = int(rng.integers(img.shape[1] - self.crop + 1))
        img = img[y:y + self.crop, x:x + self.crop]
        tgt = tgt[y:y + self.crop, x:x + self.crop]
        if augment:
            r = int(rng.integers(4))
            img, tgt = np.rot90(img, r), np.rot90(tgt, r)
            if rng.random() < 0.5:
                img, tgt = img[:, ::-1], tgt[:, ::-1]
            img = img * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1)
        return np.ascontiguousarray(img, np.float32), np.ascontiguousarray(tgt, np.uint8)

    def batch(self, size: int, augment: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """A batch of crops: ``(B, crop, crop, C)`` and ``(B, crop, crop)``."""
        pairs = [self.sample(augment) for _ in range(size)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def network_input(sample: Sample, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """The network input of a data set image (grey, percentile-normalised), as the adapter makes it."""
    axes = "YXC" if sample.image.ndim == 3 else "YX"
    return prepare_image(sample.image, axes, 1, True, low, high)
