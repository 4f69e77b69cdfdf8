"""OpSeF adapter of the 3-class U-Net (family ``unet``, TensorFlow / Keras 2).

TensorFlow is imported inside :meth:`UNetAdapter.runtime_info`,
:meth:`UNetAdapter.load` and :meth:`UNetAdapter.predict` only: importing this
module imports no framework.

A model folder holds ``manifest.yaml``, the Keras weights (``*.weights.h5``,
``*.h5`` or ``*.keras``) and ``config.json`` with the network configuration
(:class:`opsef_unet.config.NetworkConfig`), which rebuilds the network before
the weights are loaded. Manifest ``options``:

``config`` / ``weights``
    File names inside the folder (default ``config.json`` / the first
    ``.h5`` / ``.keras`` file listed under ``weights``).
``tile_size`` / ``tile_overlap`` / ``tile_batch``
    Fixed network input tile (a multiple of ``2**depth``), minimum overlap of
    neighbouring tiles, tiles per network call.
``seed_mode`` / ``min_distance`` / ``smooth_sigma``
    Object step seeds and probability smoothing (see
    :func:`opsef_unet.objects.probabilities_to_labels`).
``color``
    ``mean``: RGB(A) images become grey as the mean of R, G and B.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from opsef_protocol.adapter import Adapter, RuntimeInfo, RuntimeOptions
from opsef_protocol.errors import InvalidArgument, OutOfMemory, WeightsUnavailable
from opsef_protocol.manifest import ModelManifest
from opsef_protocol.tf_runtime import configure_tensorflow
from opsef_unet import __version__
from opsef_unet.config import CONFIG_FILE, ConfigError, NetworkConfig, load_config
from opsef_unet.objects import SEED_MODES
from opsef_unet.pipeline import DEFAULT_OPTIONS, segment_image

__all__ = ["UNetAdapter", "WEIGHT_SUFFIXES"]

logger = logging.getLogger(__name__)

#: File endings of Keras weight files the adapter loads.
WEIGHT_SUFFIXES = (".weights.h5", ".h5", ".keras")
_COLOR_MODES = ("mean",)


class UNetAdapter(Adapter):
    """CellProfiler 3.0 style 3-class U-Net: tiled prediction + watershed object step."""

    family: ClassVar[str] = "unet"
    #: TensorFlow device every prediction runs on (set by :meth:`runtime_info`).
    _tf_device: ClassVar[str | None] = None
    _device_name: ClassVar[str] = "cpu"

    def __init__(self, manifest: ModelManifest, folder: Path, runtime: RuntimeOptions) -> None:
        super().__init__(manifest, folder, runtime)
        self.config: NetworkConfig | None = None
        self.options: dict[str, Any] = {**DEFAULT_OPTIONS, **manifest.options}
        self._model: Any = None
        self._fn: Any = None
        self._device = "/CPU:0"

    # -- framework ---------------------------------------------------------------------------------------------------
    @classmethod
    def runtime_info(cls, runtime: RuntimeOptions) -> RuntimeInfo:
        """Choose the device (a GPU when TensorFlow sees one and ``device`` allows it), set threads and memory growth.

        Raises
        ------
        InvalidArgument
            If ``runtime.device`` is malformed or names a GPU TensorFlow does not see.
        """
        dev = configure_tensorflow(runtime)
        import tensorflow as tf

        cls._tf_device, cls._device_name, available = dev.tf_device, dev.name, dev.available
        versions = {"tensorflow": tf.__version__, "opsef-unet": __version__}
        for mod, key in (("keras", "keras"), ("scipy", "scipy"), ("skimage", "scikit-image")):
            try:
                versions[key] = str(__import__(mod).__version__)
            except (ImportError, AttributeError):  # pragma: no cover - pinned dependencies
                pass
        logger.info("TensorFlow %s on %s (available: %s)", tf.__version__, cls._device_name, ", ".join(available))
        return RuntimeInfo(
            framework="tensorflow",
            framework_version=tf.__version__,
            device=cls._device_name,
            devices_available=available,
            library_versions=versions,
            cpu_threads=int(runtime.threads or tf.config.threading.get_intra_op_parallelism_threads()),
        )

    # -- model -------------------------------------------------------------------------------------------------------
    def _weights_path(self) -> Path:
        name = self.options.get("weights")
        if not name:
            names = [w.path for w in self.manifest.weights if w.path.endswith(WEIGHT_SUFFIXES)]
            if not names:
                raise WeightsUnavailable(f"model {self.manifest.name!r}: no Keras weight file ({', '.join(WEIGHT_SUFFIXES)}) "
                                         "listed under 'weights' in its manifest")
            name = names[0]
        if not str(name).endswith(WEIGHT_SUFFIXES):
            raise WeightsUnavailable(f"model {self.manifest.name!r}: options.weights {name!r} is not a Keras weight "
                                     f"file ({', '.join(WEIGHT_SUFFIXES)})")
        return self.folder / str(name)

    def _check_options(self, config: NetworkConfig) -> None:
        o = self.options
        where = f"model {self.manifest.name!r}: manifest options"
        tile, overlap = o["tile_size"], o["tile_overlap"]
        if not isinstance(tile, int) or tile < config.multiple or tile % config.multiple:
            raise WeightsUnavailable(f"{where}: 'tile_size' must be a positive multiple of {config.multiple} "
                                     f"(2**depth), got {tile!r}")
        if not isinstance(overlap, int) or not 0 <= overlap < tile:
            raise WeightsUnavailable(f"{where}: 'tile_overlap' must be an integer in 0..{tile - 1}, got {overlap!r}")
        if not isinstance(o["tile_batch"], int) or o["tile_batch"] < 1:
            raise WeightsUnavailable(f"{where}: 'tile_batch' must be a positive integer, got {o['tile_batch']!r}")
        if o["seed_mode"] not in SEED_MODES:
            raise WeightsUnavailable(f"{where}: 'seed_mode' must be one of {SEED_MODES}, got {o['seed_mode']!r}")
        if not isinstance(o["min_distance"], int) or o["min_distance"] < 1:
            raise WeightsUnavailable(f"{where}: 'min_distance' must be a positive integer, got {o['min_distance']!r}")
        sigma = o["smooth_sigma"]
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 <= sigma <= 20:
            raise WeightsUnavailable(f"{where}: 'smooth_sigma' must be a number in 0..20, got {sigma!r}")
        if o.get("color", "mean") not in _COLOR_MODES:
            raise WeightsUnavailable(f"{where}: 'color' must be one of {_COLOR_MODES}, got {o.get('color')!r}")
        if config.input_channels != self.manifest.channels:
            raise WeightsUnavailable(f"model {self.manifest.name!r}: config.json 'input_channels' "
                                     f"({config.input_channels}) differs from the manifest's channels ({self.manifest.channels})")

    def load(self) -> None:
        """Rebuild the network from ``config.json`` and load its Keras weights.

        Raises
        ------
        WeightsUnavailable
            If ``config.json`` is missing or invalid (naming the key), an option
            is invalid, or the weights are missing or do not fit the network.
        """
        try:
            config = load_config(self.folder / str(self.options.get("config", CONFIG_FILE)))
        except ConfigError as exc:
            raise WeightsUnavailable(f"model {self.manifest.name!r}: {exc}") from None
        self._check_options(config)
        weights = self._weights_path()
        if not weights.is_file():
            raise WeightsUnavailable(f"model {self.manifest.name!r}: weight file {weights} is missing")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        from opsef_unet.network import build_unet

        device = self._tf_device or ("/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0")
        with tf.device(device):
            model = build_unet(config)
            try:
                model.load_weights(str(weights))
            except (ValueError, OSError, KeyError) as exc:
                raise WeightsUnavailable(f"model {self.manifest.name!r}: weight file {weights.name} does not fit "
                                         f"the network in config.json: {exc}") from None
        tile = int(self.options["tile_size"])
        self._fn = tf.function(lambda x: model(x, training=False), input_signature=[
            tf.TensorSpec([None, tile, tile, config.input_channels], tf.float32)])
        self._model, self.config, self._device = model, config, device
        logger.info("loaded U-Net %s (depth %d, %d parameters) on %s, tile %d", self.manifest.name, config.depth,
                    model.count_params(), device, tile)

    def _predict_batch(self, batch: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        with tf.device(self._device):
            return self._fn(tf.constant(batch, tf.float32)).numpy()

    def predict(self, image: np.ndarray, axes: str, params: dict[str, Any]) -> np.ndarray:
        """Segment a 2D image (YX, or YXC made grey) into uint32 labels of its spatial shape.

        Raises
        ------
        InvalidArgument
            For axes other than YX / YXC.
        OutOfMemory
            When the device runs out of memory (retry with a smaller ``scale`` or on another device).
        """
        if axes not in ("YX", "YXC"):
            raise InvalidArgument(f"model {self.manifest.name!r} is 2D: axes must be YX or YXC, got {axes!r}")
        if image.ndim != len(axes):
            raise InvalidArgument(f"image of shape {tuple(image.shape)} does not match axes {axes!r}")
        if self._fn is None:
            self.load()
        import tensorflow as tf

        try:
            labels = segment_image(self._predict_batch, image, axes, params, self.options,
                                   self.config.input_channels if self.config else 1)
        except tf.errors.ResourceExhaustedError as exc:
            raise OutOfMemory(f"{self._device_name} ran out of memory segmenting an image of shape {tuple(image.shape)}"
                              f" (tiles of {self.options['tile_size']} px, batch {self.options['tile_batch']}); "
                              "retry with a smaller scale or on another device") from exc
        return labels.astype(np.uint32, copy=False)

    def unload(self) -> None:
        """Drop the network."""
        self._model = self._fn = None
