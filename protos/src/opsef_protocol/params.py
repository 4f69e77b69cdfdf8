"""Segment parameters: conversion between the proto message and a plain dict, and validation.

The same validation runs in the services (on every request) and in the
orchestrator (on run configurations), so a bad value is caught before any job
is sent, with the parameter named.

Examples
--------
>>> from opsef_protocol.params import validate_params
>>> validate_params({"prob_threshold": 0.5, "n_tiles": [2, 2]})
{'prob_threshold': 0.5, 'n_tiles': [2, 2]}
>>> validate_params({"scale": 0})
Traceback (most recent call last):
...
opsef_protocol.errors.InvalidArgument: parameter 'scale' must be > 0 and <= 16, got 0
"""
from __future__ import annotations

import math
from typing import Any

from opsef_protocol.errors import InvalidArgument
from opsef_protocol.v1 import segmenter_pb2 as pb

__all__ = ["PARAMETER_NAMES", "params_from_proto", "params_to_proto", "validate_params"]

_REPEATED = {"channels", "n_tiles"}
_BOOL = {"normalize", "do_3d"}
_INT = {"min_size"}
#: Names of all Segment parameters.
PARAMETER_NAMES: tuple[str, ...] = tuple(f.name for f in pb.SegmentParameters.DESCRIPTOR.fields)

# name -> (low, high, low_inclusive, high_inclusive)
_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "scale": (0.0, 16.0, False, True),
    "diameter": (0.0, 10000.0, True, True),
    "prob_threshold": (0.0, 1.0, True, True),
    "nms_threshold": (0.0, 1.0, True, True),
    "flow_threshold": (0.0, 10.0, True, True),
    "cellprob_threshold": (-20.0, 20.0, True, True),
    "norm_percentile_low": (0.0, 100.0, True, True),
    "norm_percentile_high": (0.0, 100.0, True, True),
    "anisotropy": (0.0, 100.0, False, True),
    "stitch_threshold": (0.0, 1.0, True, True),
    "min_size": (0, 10**9, True, True),
    "boundary_weight": (0.0, 10.0, True, True),
    "distance_threshold": (0.0, 1000.0, True, True),
    "foreground_threshold": (0.0, 1.0, True, True),
}


def _describe(lo: float, hi: float, lo_inc: bool, hi_inc: bool) -> str:
    return f"{'>=' if lo_inc else '>'} {lo:g} and {'<=' if hi_inc else '<'} {hi:g}"


def validate_params(params: dict[str, Any]) -> dict[str, Any]:
    """Check names, types and ranges of Segment parameters.

    Parameters
    ----------
    params : dict
        Parameter name -> value; only the parameters that are set.

    Returns
    -------
    dict
        The same parameters with values normalised (ints, floats, lists).

    Raises
    ------
    InvalidArgument
        Naming the first bad parameter and what is allowed.
    """
    out: dict[str, Any] = {}
    for name, value in params.items():
        if name not in PARAMETER_NAMES:
            raise InvalidArgument(f"unknown parameter {name!r}; known: {', '.join(PARAMETER_NAMES)}")
        if name in _REPEATED:
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise InvalidArgument(f"parameter {name!r} must be a list of integers, got {value!r}")
            value = [int(v) for v in value]
            if name == "n_tiles" and (not 1 <= len(value) <= 3 or any(not 1 <= v <= 256 for v in value)):
                raise InvalidArgument(f"parameter 'n_tiles' needs 1 to 3 entries, each 1..256, got {value}")
            if name == "channels" and (len(value) != 2 or any(not 0 <= v <= 3 for v in value)):
                raise InvalidArgument(f"parameter 'channels' needs 2 entries [cytoplasm, nucleus], each 0..3, got {value}")
        elif name in _BOOL:
            if not isinstance(value, bool):
                raise InvalidArgument(f"parameter {name!r} must be true or false, got {value!r}")
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidArgument(f"parameter {name!r} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise InvalidArgument(f"parameter {name!r} must be finite, got {value!r}")
            if name in _INT:
                if int(value) != value:
                    raise InvalidArgument(f"parameter {name!r} must be an integer, got {value!r}")
                value = int(value)
            else:
                value = float(value)
            lo, hi, lo_inc, hi_inc = _RANGES[name]
            if (value < lo or (value == lo and not lo_inc)) or (value > hi or (value == hi and not hi_inc)):
                raise InvalidArgument(f"parameter {name!r} must be {_describe(lo, hi, lo_inc, hi_inc)}, got {value:g}")
        out[name] = value
    low, high = out.get("norm_percentile_low"), out.get("norm_percentile_high")
    if low is not None and high is not None and low >= high:
        raise InvalidArgument(f"parameter 'norm_percentile_low' ({low:g}) must be below 'norm_percentile_high' ({high:g})")
    return out


def params_from_proto(message: pb.SegmentParameters) -> dict[str, Any]:
    """The parameters set in a ``SegmentParameters`` message, as a dict (unset ones left out)."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        if field.name in _REPEATED:
            values = list(getattr(message, field.name))
            if values:
                out[field.name] = values
        elif message.HasField(field.name):
            value = getattr(message, field.name)
            out[field.name] = float(value) if isinstance(value, float) else value
    return out


def params_to_proto(params: dict[str, Any]) -> pb.SegmentParameters:
    """Build a ``SegmentParameters`` message from a dict of validated parameters."""
    params = validate_params(params)
    message = pb.SegmentParameters()
    for name, value in params.items():
        if name in _REPEATED:
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)
    return message
