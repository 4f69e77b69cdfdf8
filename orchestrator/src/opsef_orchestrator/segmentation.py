"""Model references (``service:model``) and segmenting images through the services."""
from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from opsef_orchestrator.io import Image

__all__ = ["ModelRef", "parse_model_ref", "service_input", "SERVICE_AXES"]

#: Axes a model service takes.
SERVICE_AXES = ("YX", "YXC", "ZYX", "ZYXC")

_REF = re.compile(r"^(?P<service>[A-Za-z0-9][A-Za-z0-9_.-]*):(?P<model>[A-Za-z0-9][A-Za-z0-9_.-]*)$")


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A model of a service, written ``service:model``."""

    service: str
    model: str

    def __str__(self) -> str:
        return f"{self.service}:{self.model}"


def parse_model_ref(text: str) -> ModelRef:
    """Parse ``"stardist:2D_versatile_fluo"``.

    Examples
    --------
    >>> parse_model_ref("stardist:stardist_dsb2018_starter")
    ModelRef(service='stardist', model='stardist_dsb2018_starter')
    >>> parse_model_ref("stardist")
    Traceback (most recent call last):
    ...
    ValueError: model 'stardist' must be written SERVICE:MODEL, e.g. stardist:stardist_dsb2018_starter
    """
    m = _REF.match(text or "")
    if not m:
        raise ValueError(f"model {text!r} must be written SERVICE:MODEL, e.g. stardist:stardist_dsb2018_starter")
    return ModelRef(m["service"], m["model"])


def service_input(img: "Image", time_hint: str = "--time") -> tuple[np.ndarray, str]:
    """Pixels and axes of an imported image as a service takes them.

    RGBA loses its alpha channel, float64 becomes float32, and an image that
    still has a time axis (or other axes) is refused naming the file;
    ``time_hint`` says where the user selects a time point.

    Examples
    --------
    >>> from opsef_orchestrator.io import Image
    >>> data, axes = service_input(Image(np.zeros((4, 5, 4), np.uint8), "YXC"))
    >>> data.shape, axes
    ((4, 5, 3), 'YXC')
    """
    data, axes = img.data, img.axes
    if "T" in axes:
        raise ValueError(f"{img.path}: the image has a time axis (axes {axes}); choose a time point with {time_hint}")
    if axes.endswith("C") and data.shape[-1] == 4:
        data = data[..., :3]  # RGBA: drop alpha
    if axes not in SERVICE_AXES:
        raise ValueError(f"{img.path}: axes {axes} cannot be sent to a model (need {', '.join(SERVICE_AXES)})")
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    return np.ascontiguousarray(data), axes
