"""OpSeF StarDist service: adapter and training command (TensorFlow imported lazily)."""
__version__ = "0.1.0"
__all__ = ["__version__"]
