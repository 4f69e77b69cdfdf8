"""OpSeF orchestrator: import, preprocessing, sweeps over model services, postprocessing, analysis, export.

Never imports TensorFlow or PyTorch: models run in their own services.
"""
__version__ = "0.1.0"
__all__ = ["__version__"]
