"""Reading the DSB2018-style training data (``images/<id>.png``, ``masks/<id>.tif``, ``index.json``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["load_split", "to_grey"]


def to_grey(image: np.ndarray) -> np.ndarray:
    """Grey float32 image from grey, RGB or RGBA (mean of the first three channels).

    Examples
    --------
    >>> to_grey(np.ones((2, 2, 4), np.uint8)).tolist()
    [[1.0, 1.0], [1.0, 1.0]]
    """
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[..., :3].mean(axis=-1)
    return image.astype(np.float32)


def load_split(root: str | Path, split: str, kinds: tuple[str, ...] = ("fluo", "he")) -> tuple[list[str], list[np.ndarray], list[np.ndarray], list[str]]:
    """Ids, grey images, instance masks and kinds of one split (``train`` or ``val``), sorted by id."""
    import imageio.v3 as iio
    import tifffile

    root = Path(root)
    index = json.loads((root / "index.json").read_text())
    ids = sorted(k for k, v in index.items() if v["split"] == split and v["kind"] in kinds)
    if not ids:
        raise ValueError(f"{root}: no images of split {split!r} and kinds {kinds}")
    images = [to_grey(iio.imread(root / split / "images" / f"{i}.png")) for i in ids]
    masks = [tifffile.imread(root / split / "masks" / f"{i}.tif").astype(np.int32) for i in ids]
    return ids, images, masks, [index[i]["kind"] for i in ids]
