"""Template OpSeF model service: a classical threshold + watershed "network family"."""
__version__ = "0.1.0"
