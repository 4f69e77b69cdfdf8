"""OpSeF U-Net service: a CellProfiler 3.0 style 3-class U-Net for nuclei (TensorFlow / Keras 2).

Importing this package imports no framework; TensorFlow is imported lazily by
:mod:`opsef_unet.adapter` and :mod:`opsef_unet.network` inside functions.
"""
from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
