"""Template adapter: smoothing + threshold + distance-transform watershed (2D and 3D).

This is the minimum a model family needs: a class deriving from
:class:`~opsef_protocol.adapter.Adapter` with ``family``, ``runtime_info``,
``load`` and ``predict``. The server around it (health, reflection, limits,
status codes, validation of images and parameters) is shared by every
service; the adapter only turns one validated image into uint32 labels of the
image's spatial shape.

To add a network family, replace the body of :meth:`load` (read your weights)
and :meth:`predict` (run your network, then turn its output into labels), and
:meth:`runtime_info` (import your framework, pick the device, set threads and a
memory cap). Import the framework inside these methods, never at module
import: the server parses its arguments and sets up caches first.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from opsef_protocol.adapter import (
    Adapter,
    RuntimeInfo,
    RuntimeOptions,
    percentile_normalize,
    relabel_sequential,
    rescale_image,
    resize_labels,
    to_channels_last,
)
from opsef_protocol.errors import InvalidArgument, WeightsUnavailable
from opsef_protocol.manifest import ModelManifest

from opsef_template import __version__

__all__ = ["ThresholdWatershedAdapter", "segment_threshold_watershed"]

logger = logging.getLogger(__name__)


def segment_threshold_watershed(
    image: np.ndarray,
    *,
    sigma: float = 1.0,
    foreground_threshold: float | None = None,
    min_distance: int = 3,
    min_size: int = 0,
) -> np.ndarray:
    """Instance labels of bright objects in a normalised grey image (2D or 3D).

    Parameters
    ----------
    image : ndarray
        Grey image, float, roughly in [0, 1] (percentile-normalised).
    sigma : float
        Gaussian smoothing before thresholding (pixels); 0 = none.
    foreground_threshold : float, optional
        Intensity threshold on the smoothed image; default: Otsu's threshold.
    min_distance : int
        Smallest distance between two object centres (watershed seeds).
    min_size : int
        Objects with fewer pixels are removed.

    Returns
    -------
    ndarray of uint32
        Labels 1..N, 0 = background; all zero for a constant image.

    Examples
    --------
    >>> img = np.zeros((32, 32), np.float32); img[4:10, 4:10] = 1; img[20:28, 18:30] = 1
    >>> int(segment_threshold_watershed(img, sigma=0).max())
    2
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    img = np.asarray(image, dtype=np.float32)
    if sigma > 0:
        img = ndi.gaussian_filter(img, sigma)
    lo, hi = float(img.min()), float(img.max())
    if not hi - lo > 1e-6 * max(1.0, abs(hi)):
        return np.zeros(img.shape, np.uint32)  # constant image: no objects
    thr = float(threshold_otsu(img)) if foreground_threshold is None else lo + foreground_threshold * (hi - lo)
    foreground = img > thr
    if not foreground.any():
        return np.zeros(img.shape, np.uint32)
    components, n = ndi.label(foreground)
    distance = ndi.distance_transform_edt(foreground)
    # seeds: local maxima of the distance transform within min_distance (a plateau is one seed)
    size = 2 * max(1, int(min_distance)) + 1
    peaks = foreground & (distance >= ndi.maximum_filter(distance, size=size))
    markers, n_peaks = ndi.label(peaks)
    # every connected component gets at least one seed (flat objects may have no clear peak)
    seeded = np.zeros(n + 1, bool)
    seeded[components[markers > 0]] = True
    unseeded = ~seeded[components] & foreground
    markers[unseeded] = components[unseeded] + n_peaks
    labels = watershed(-distance, markers, mask=foreground)
    if min_size > 0 and labels.max() > 0:
        sizes = np.bincount(labels.ravel())
        labels[sizes[labels] < min_size] = 0
    return relabel_sequential(labels)


class ThresholdWatershedAdapter(Adapter):
    """The template's model family: a classical pipeline whose "weights" are a JSON file of settings."""

    family = "template"

    def __init__(self, manifest: ModelManifest, folder: Path, runtime: RuntimeOptions) -> None:
        super().__init__(manifest, folder, runtime)
        self.settings: dict[str, Any] | None = None

    @classmethod
    def runtime_info(cls, runtime: RuntimeOptions) -> RuntimeInfo:
        """CPU only: a GPU request is refused at start-up, naming the device.

        A framework adapter picks the device here (``cpu``, ``cuda``, ``cuda:N``;
        ``auto`` = a GPU when the framework sees one), sets its CPU threads from
        ``runtime.threads`` and its memory cap from ``runtime.memory_fraction``,
        and reports all of it.
        """
        import scipy
        import skimage

        if runtime.device not in ("auto", "cpu"):
            raise InvalidArgument(f"device {runtime.device!r} requested but the template service runs on the CPU only "
                                  "(use --device cpu or auto)")
        return RuntimeInfo(
            framework="scikit-image",
            framework_version=skimage.__version__,
            device="cpu",
            devices_available=("cpu",),
            library_versions={"scikit-image": skimage.__version__, "scipy": scipy.__version__, "opsef-template": __version__},
            cpu_threads=runtime.threads,
        )

    def load(self) -> None:
        """Read the model's settings file (the server has checked its sha256)."""
        path = self.folder / self.manifest.weights[0].path
        try:
            self.settings = dict(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise WeightsUnavailable(f"model {self.manifest.name!r}: cannot read {path}: {exc}") from None

    def unload(self) -> None:
        self.settings = None

    def predict(self, image: np.ndarray, axes: str, params: dict[str, Any]) -> np.ndarray:
        if self.settings is None:
            raise RuntimeError("model not loaded")
        spatial = len(axes.replace("C", ""))
        grey = to_channels_last(image, axes, 1)[..., 0]
        if params.get("normalize", True):
            grey = percentile_normalize(grey, params.get("norm_percentile_low", 1.0), params.get("norm_percentile_high", 99.8))
        scale = float(params.get("scale", 1.0))
        shape = grey.shape
        work = rescale_image(grey, scale, spatial) if scale != 1.0 else grey
        labels = segment_threshold_watershed(
            work,
            sigma=float(self.settings.get("sigma", 1.0)),
            foreground_threshold=params.get("foreground_threshold"),
            min_distance=int(params.get("distance_threshold", self.settings.get("min_distance", 3))),
            min_size=int(params.get("min_size", 0)),
        )
        if labels.shape != shape:
            labels = resize_labels(labels, shape)
        return labels
