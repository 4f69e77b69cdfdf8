"""Image import and export: TIFF / OME-TIFF / ImageJ, PNG / JPEG, Leica LIF, folders.

>>> from opsef_orchestrator.io import read_image, inspect_image, list_images, write_image
"""
from __future__ import annotations

from opsef_orchestrator.io.folders import list_images, matches
from opsef_orchestrator.io.image import (
    CANONICAL_AXES,
    Image,
    ImageReadError,
    check_image_data,
    normalize_axes,
    select_axes,
)
from opsef_orchestrator.io.readers import (
    IMAGE_EXTENSIONS,
    image_format,
    inspect_image,
    read_image,
    read_region,
)
from opsef_orchestrator.io.writers import atomic_path, write_image, write_labels

__all__ = [
    "CANONICAL_AXES",
    "IMAGE_EXTENSIONS",
    "Image",
    "ImageReadError",
    "atomic_path",
    "check_image_data",
    "image_format",
    "inspect_image",
    "list_images",
    "matches",
    "normalize_axes",
    "read_image",
    "read_region",
    "select_axes",
    "write_image",
    "write_labels",
]
