"""The 3-class U-Net (background / nucleus interior / boundary) in tf.keras.

TensorFlow is imported inside :func:`build_unet` only.
"""
from __future__ import annotations

import logging
from typing import Any

from opsef_unet.config import NetworkConfig

__all__ = ["build_unet"]

logger = logging.getLogger(__name__)


def build_unet(config: NetworkConfig) -> Any:
    """Build the (untrained) U-Net for ``config``.

    Each level is two convolutions (3x3, same padding, optional batch
    normalisation, ReLU); down-sampling by 2x2 max pooling, up-sampling by 2x2
    transposed convolution and concatenation with the skip connection; a 1x1
    convolution with softmax gives the class probabilities.

    Parameters
    ----------
    config : NetworkConfig
        Architecture.

    Returns
    -------
    tf.keras.Model
        Input ``(None, None, None, input_channels)``, output
        ``(None, None, None, n_classes)`` softmax probabilities. Spatial sizes
        must be multiples of ``config.multiple``.
    """
    import tensorflow as tf

    layers = tf.keras.layers

    def block(x: Any, filters: int, name: str) -> Any:
        for i in (1, 2):
            x = layers.Conv2D(filters, config.kernel_size, padding="same", use_bias=not config.batch_norm,
                              kernel_initializer="he_normal", name=f"{name}_conv{i}")(x)
            if config.batch_norm:
                x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
            x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
        return x

    inputs = tf.keras.Input(shape=(None, None, config.input_channels), name="image")
    x = inputs
    skips = []
    for level in range(config.depth):
        x = block(x, config.base_filters * 2**level, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = block(x, config.base_filters * 2**config.depth, "bottom")
    if config.dropout > 0:
        x = layers.Dropout(config.dropout, name="bottom_dropout")(x)
    for level in reversed(range(config.depth)):
        filters = config.base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"up{level}_deconv")(x)
        x = layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = block(x, filters, f"up{level}")
    outputs = layers.Conv2D(config.n_classes, 1, activation="softmax", dtype="float32", name="probabilities")(x)
    model = tf.keras.Model(inputs, outputs, name="unet")
    logger.debug("built U-Net depth %d base %d: %d parameters", config.depth, config.base_filters, model.count_params())
    return model
