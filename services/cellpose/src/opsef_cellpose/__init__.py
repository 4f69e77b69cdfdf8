"""OpSeF Cellpose service: the Cellpose adapter and the starter-model training command.

Importing this package imports neither PyTorch nor Cellpose.
"""
from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
