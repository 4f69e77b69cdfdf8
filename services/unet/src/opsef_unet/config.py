"""The network configuration stored as ``config.json`` beside a model's weights.

Examples
--------
>>> cfg = NetworkConfig.from_dict({"depth": 3, "base_filters": 16})
>>> cfg.n_classes, cfg.input_channels
(3, 1)
>>> NetworkConfig.from_dict({"depth": "three"})  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
...
opsef_unet.config.ConfigError: config.json: key 'depth' must be an integer in 1..6, got 'three'
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_FILE", "CLASS_NAMES", "ConfigError", "NetworkConfig", "load_config", "save_config"]

logger = logging.getLogger(__name__)

#: File name of the network configuration inside a model folder.
CONFIG_FILE = "config.json"
#: Output classes of the network, in channel order.
CLASS_NAMES: tuple[str, ...] = ("background", "interior", "boundary")

# key -> (type, low, high)
_INT_KEYS: dict[str, tuple[int, int]] = {
    "input_channels": (1, 16),
    "n_classes": (3, 3),
    "depth": (1, 6),
    "base_filters": (1, 256),
    "kernel_size": (1, 7),
}


class ConfigError(ValueError):
    """``config.json`` is missing, unreadable or invalid; the message names the key."""


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """U-Net architecture: what is needed to rebuild the network before loading weights.

    Attributes
    ----------
    input_channels : int
        Channels of the network input (1: grey).
    n_classes : int
        Output classes; always 3 (background, interior, boundary).
    depth : int
        Number of 2x down-sampling steps; input tiles must be a multiple of ``2**depth``.
    base_filters : int
        Filters of the first level; doubled at every level.
    kernel_size : int
        Convolution kernel size.
    batch_norm : bool
        Batch normalisation after every convolution.
    dropout : float
        Dropout rate at the bottleneck (0 = none).
    """

    input_channels: int = 1
    n_classes: int = 3
    depth: int = 3
    base_filters: int = 16
    kernel_size: int = 3
    batch_norm: bool = True
    dropout: float = 0.0

    @property
    def multiple(self) -> int:
        """Spatial sizes the network accepts are multiples of this."""
        return 2**self.depth

    @classmethod
    def from_dict(cls, data: Any) -> "NetworkConfig":
        """Validate a mapping (unknown keys rejected) and build a config.

        Raises
        ------
        ConfigError
            Naming the offending key.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"config.json: expected a JSON object at the top level, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"config.json: unknown key(s) {unknown}; known keys: {sorted(known)}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key in _INT_KEYS:
                lo, hi = _INT_KEYS[key]
                if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                    raise ConfigError(f"config.json: key {key!r} must be an integer in {lo}..{hi}, got {value!r}")
            elif key == "batch_norm":
                if not isinstance(value, bool):
                    raise ConfigError(f"config.json: key 'batch_norm' must be true or false, got {value!r}")
            elif key == "dropout":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                    raise ConfigError(f"config.json: key 'dropout' must be a number in [0, 1), got {value!r}")
                value = float(value)
            values[key] = value
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-able dict."""
        return dataclasses.asdict(self)


def load_config(path: str | Path) -> NetworkConfig:
    """Read and validate a ``config.json``.

    Raises
    ------
    ConfigError
        If the file is missing, not JSON, or invalid (naming the key).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    try:
        return NetworkConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {str(exc).removeprefix('config.json: ')}") from None


def save_config(config: NetworkConfig, path: str | Path) -> None:
    """Write ``config`` as JSON."""
    Path(path).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
