"""StarDist adapter: 2D and 3D models, thresholds, ``n_tiles``, percentile normalisation.

Project and user models are StarDist model folders (``config.json``,
``weights_best.h5``, ``thresholds.json``) with an OpSeF ``manifest.yaml``.
Published models (``2D_versatile_fluo``, ``2D_versatile_he``, ``3D_demo``) go
through StarDist's own ``from_pretrained`` and its Keras cache
(``$KERAS_HOME/models/StarDist2D/<name>``); offline and not cached they raise
:class:`~opsef_protocol.errors.WeightsUnavailable` naming that folder.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from opsef_protocol.adapter import (
    Adapter,
    RuntimeInfo,
    RuntimeOptions,
    pad_to_min_size,
    percentile_normalize,
    to_channels_last,
)
from opsef_protocol.errors import InvalidArgument, OutOfMemory, WeightsUnavailable
from opsef_protocol.manifest import ModelManifest
from opsef_protocol.tf_runtime import configure_tensorflow

__all__ = ["StarDistAdapter", "auto_n_tiles"]

logger = logging.getLogger(__name__)

#: Above this many pixels per tile, StarDist's own tiling is used automatically.
_AUTO_TILE_PIXELS = 1024 * 1024
_AUTO_TILE_VOXELS = 128 * 256 * 256


def auto_n_tiles(spatial_shape: tuple[int, ...], budget: int) -> tuple[int, ...]:
    """Tiles per spatial axis so that each tile has at most ``budget`` pixels (Y and X split first).

    Examples
    --------
    >>> auto_n_tiles((2048, 2048), 1024 * 1024)
    (2, 2)
    >>> auto_n_tiles((100, 100), 1024 * 1024)
    (1, 1)
    """
    tiles = [1] * len(spatial_shape)
    order = sorted(range(len(spatial_shape)), key=lambda i: -spatial_shape[i])
    while math.prod(s / t for s, t in zip(spatial_shape, tiles)) > budget:
        i = max(order, key=lambda k: spatial_shape[k] / tiles[k])
        tiles[i] += 1
    return tuple(tiles)


def _keras_home(runtime: RuntimeOptions) -> Path:
    return Path(os.environ.get("KERAS_HOME") or (runtime.cache_dir or Path.home() / ".cache" / "opsef") / "keras")


class StarDistAdapter(Adapter):
    """One StarDist 2D or 3D model."""

    family = "stardist"

    def __init__(self, manifest: ModelManifest, folder: Path, runtime: RuntimeOptions) -> None:
        super().__init__(manifest, folder, runtime)
        self.model: Any = None

    # -- framework -----------------------------------------------------------
    @classmethod
    def runtime_info(cls, runtime: RuntimeOptions) -> RuntimeInfo:
        dev = configure_tensorflow(runtime)
        import csbdeep
        import stardist
        import tensorflow as tf

        return RuntimeInfo(
            framework="tensorflow",
            framework_version=tf.__version__,
            device=dev.name,
            devices_available=dev.available,
            library_versions={"tensorflow": tf.__version__, "stardist": stardist.__version__, "csbdeep": csbdeep.__version__},
            cpu_threads=int(runtime.threads or tf.config.threading.get_intra_op_parallelism_threads()),
        )

    @classmethod
    def _published_folder(cls, manifest: ModelManifest, runtime: RuntimeOptions) -> Path:
        kind = "StarDist3D" if 3 in manifest.dims else "StarDist2D"
        return _keras_home(runtime) / "models" / kind / str(manifest.published_name)

    @classmethod
    def published_weights(cls, manifest: ModelManifest, runtime: RuntimeOptions) -> tuple[str, bool]:
        folder = cls._published_folder(manifest, runtime)
        present = (folder / "config.json").is_file() and any(folder.glob("weights*.h5"))
        return str(folder), present

    # -- model -----------------------------------------------------------------
    def load(self) -> None:
        from stardist.models import StarDist2D, StarDist3D

        cls = StarDist3D if 3 in self.manifest.dims else StarDist2D
        if self.manifest.source == "published":
            folder, present = self.published_weights(self.manifest, self.runtime)
            if present:
                self.model = cls(None, name=Path(folder).name, basedir=str(Path(folder).parent))
                return
            try:
                self.model = cls.from_pretrained(self.manifest.published_name)
            except Exception as exc:  # noqa: BLE001 - offline: URL fetch error, turn it into a precondition
                raise WeightsUnavailable(
                    f"published StarDist model {self.manifest.published_name!r} is not cached in {folder} and could "
                    f"not be downloaded ({type(exc).__name__}); on a machine with internet run "
                    f"`{cls.__name__}.from_pretrained('{self.manifest.published_name}')` with KERAS_HOME set to "
                    f"{_keras_home(self.runtime)}, or copy the unzipped model folder to {folder}"
                ) from None
            if self.model is None:
                raise WeightsUnavailable(f"StarDist does not know a published model {self.manifest.published_name!r}")
        else:
            self.model = cls(None, name=self.folder.name, basedir=str(self.folder.parent))

    def unload(self) -> None:
        self.model = None

    def predict(self, image: np.ndarray, axes: str, params: dict[str, Any]) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("model not loaded")
        ndim = self.model.config.n_dim
        spatial = len(axes.replace("C", ""))
        if spatial != ndim:
            raise InvalidArgument(f"model {self.manifest.name!r} is {ndim}D but the image has axes {axes!r}")
        n_channel = self.model.config.n_channel_in
        img = to_channels_last(image, axes, n_channel)
        if params.get("normalize", True):
            low = params.get("norm_percentile_low", 1.0)
            high = params.get("norm_percentile_high", 99.8)
            img = np.stack([percentile_normalize(img[..., c], low, high) for c in range(n_channel)], axis=-1)
        min_px = max(self.manifest.min_size_px, 16)
        img, crop = pad_to_min_size(img, ndim, min_px)
        shape = img.shape[:ndim]
        if params.get("n_tiles"):
            n_tiles = tuple(params["n_tiles"])
            if len(n_tiles) != ndim:
                raise InvalidArgument(f"parameter 'n_tiles' needs {ndim} entries for a {ndim}D model, got {list(n_tiles)}")
        else:
            scale = params.get("scale", 1.0)
            scaled = tuple(int(s * scale) if i >= ndim - 2 else s for i, s in enumerate(shape))
            n_tiles = auto_n_tiles(scaled, _AUTO_TILE_PIXELS if ndim == 2 else _AUTO_TILE_VOXELS)
        scale = params.get("scale", 1.0)
        kwargs: dict[str, Any] = {}
        if scale != 1.0:
            kwargs["scale"] = (1.0,) * (ndim - 2) + (scale, scale) + (1.0,)
        try:
            import tensorflow as tf

            labels, _ = self.model.predict_instances(
                img,
                axes="YXC" if ndim == 2 else "ZYXC",
                prob_thresh=params.get("prob_threshold"),
                nms_thresh=params.get("nms_threshold"),
                n_tiles=n_tiles + (1,),
                show_tile_progress=False,
                verbose=False,
                **kwargs,
            )
        except tf.errors.ResourceExhaustedError as exc:
            raise OutOfMemory(f"device out of memory for shape {img.shape} with n_tiles {n_tiles}: use more tiles") from exc
        labels = np.asarray(labels)[crop]
        min_size = int(params.get("min_size", 0))
        if min_size > 0 and labels.max() > 0:
            counts = np.bincount(labels.ravel())
            small = np.flatnonzero(counts < min_size)
            labels = np.where(np.isin(labels, small[small > 0]), 0, labels)
        return labels.astype(np.uint32, copy=False)
