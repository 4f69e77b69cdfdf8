"""Model references (``service:model``) and segmenting images through the services."""
from __future__ import annotations

import dataclasses
import re

__all__ = ["ModelRef", "parse_model_ref"]

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
