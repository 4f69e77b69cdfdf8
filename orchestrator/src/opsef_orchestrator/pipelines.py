"""Preprocessing pipelines: named, ordered lists of operations, declared in configuration or built in Python.

A step is a mapping with ``op`` (the operation name) and that operation's
parameters, validated with pydantic (unknown keys and bad values are rejected
naming the exact key, e.g. ``steps.1.gaussian.sigma``)::

    name: median_clahe
    steps:
      - {op: median, size: 3}
      - {op: clahe, tile_grid: 8, clip_limit: 0.01}
      - {op: to_dtype, dtype: uint8}

Intensity filters (:mod:`opsef_orchestrator.preprocess`) run per channel and
time point; on images with Z they run per plane (``mode: plane``) or on the
whole volume (``mode: volume``) where the operation supports it;
``mode: auto`` (default) uses the operation's default (see
:data:`PIPELINE_OPERATIONS`). Reshape operations (:mod:`opsef_orchestrator.reshape`)
work on the whole image and may change its axes.

Examples
--------
>>> p = Pipeline(name="demo", steps=[{"op": "median", "size": 3}, {"op": "to_dtype", "dtype": "uint8"}])
>>> out, axes = p.apply(np.arange(48, dtype=np.uint16).reshape(3, 4, 4), "ZYX")
>>> out.shape, out.dtype.name, axes
((3, 4, 4), 'uint8', 'ZYX')
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, ClassVar, Literal, Optional, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator, model_validator

from opsef_orchestrator import preprocess as pp
from opsef_orchestrator import reshape as rs

if TYPE_CHECKING:
    from opsef_orchestrator.io.image import Image

__all__ = [
    "PipelineStep",
    "Pipeline",
    "PipelineOperation",
    "PIPELINE_OPERATIONS",
    "ReadOptions",
    "PreprocessConfig",
    "check_unique_names",
    "apply_filter",
    "operations_reference",
    "parse_step",
]

Mode = Literal["auto", "plane", "volume"]


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Operation name (the discriminator).
    op: str

    def params(self) -> dict[str, Any]:
        """The operation's parameters (without ``op`` and ``mode``)."""
        return self.model_dump(exclude={"op", "mode"})

    def apply(self, data: np.ndarray, axes: str) -> tuple[np.ndarray, str]:  # pragma: no cover - abstract
        raise NotImplementedError


class _FilterStep(_Step):
    #: How to treat 3D images: per plane, as a volume, or the operation's default.
    mode: Mode = Field("auto", description="3D images: 'plane', 'volume' or 'auto' (the operation's default).")

    def apply(self, data: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
        return apply_filter(self.op, data, axes, mode=self.mode, **self.params())


class _ReshapeStep(_Step):
    _function: ClassVar[Callable[..., tuple[np.ndarray, str]]]

    def apply(self, data: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
        return type(self)._function(data, axes, **self.params())


# ------------------------------------------------------------------ filter steps


class NoneStep(_FilterStep):
    """No operation."""

    op: Literal["none"]


class MedianStep(_FilterStep):
    """Median filter with a square kernel."""

    op: Literal["median"]
    size: int = Field(3, ge=1, description="Odd kernel size (3, 5, ...).")

    @field_validator("size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("must be odd (3, 5, ...)")
        return v


class MeanStep(_FilterStep):
    """Mean filter over a disk."""

    op: Literal["mean"]
    radius: float = Field(1.0, ge=0.5, description="Disk radius in pixels.")


class GaussianStep(_FilterStep):
    """Gaussian blur."""

    op: Literal["gaussian"]
    sigma: Union[Annotated[float, Field(ge=0)], list[Annotated[float, Field(ge=0)]]] = Field(
        1.0, description="Standard deviation in pixels (one or one per axis).")


class SubtractConstantStep(_FilterStep):
    """Constant background subtraction (clipped at 0)."""

    op: Literal["subtract_constant"]
    value: float = Field(..., ge=0, description="Value to subtract.")


class RollingBallStep(_FilterStep):
    """Rolling-ball background subtraction."""

    op: Literal["rolling_ball"]
    radius: float = Field(50.0, gt=0, description="Ball radius in pixels.")
    shrink: Optional[int] = Field(None, ge=1, description="Shrink factor for speed (default as ImageJ).")


class WhiteTophatStep(_FilterStep):
    """White top-hat background removal."""

    op: Literal["white_tophat"]
    radius: int = Field(15, ge=1, description="Disk radius in pixels (larger than the objects).")


class ClaheStep(_FilterStep):
    """CLAHE histogram equalisation (output float32 in [0, 1])."""

    op: Literal["clahe"]
    tile_grid: Union[Annotated[int, Field(ge=1)], list[Annotated[int, Field(ge=1)]]] = Field(
        8, description="Contextual regions per axis.")
    clip_limit: float = Field(0.01, gt=0, le=1, description="Normalised clip limit.")
    nbins: int = Field(256, ge=2, description="Histogram bins.")


class SobelStep(_FilterStep):
    """Sobel edge magnitude (float32)."""

    op: Literal["sobel"]


class RobertsStep(_FilterStep):
    """Roberts edge magnitude (float32, 2D only)."""

    op: Literal["roberts"]


class InvertStep(_FilterStep):
    """Intensity inversion."""

    op: Literal["invert"]
    reference: Literal["image", "dtype"] = Field("image", description="Invert within the image's or the dtype's range.")


class NormalizeStep(_FilterStep):
    """Percentile normalisation (float32)."""

    op: Literal["normalize"]
    low: float = Field(1.0, ge=0, le=100, description="Percentile mapped to 0.")
    high: float = Field(99.8, ge=0, le=100, description="Percentile mapped to 1.")
    clip: bool = Field(False, description="Clip to [0, 1].")

    @model_validator(mode="after")
    def _order(self) -> "NormalizeStep":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be smaller than high ({self.high})")
        return self


class ToDtypeStep(_FilterStep):
    """Rescale and convert to a dtype, clipping."""

    op: Literal["to_dtype"]
    dtype: Literal["uint8", "uint16", "float32", "float64"] = Field("uint8", description="Target dtype.")
    in_range: Union[Literal["image", "dtype"], tuple[float, float]] = Field(
        "image", description="Input range mapped to the target's: image min..max, dtype range or [low, high].")


# ------------------------------------------------------------------ reshape steps


class RescaleStep(_ReshapeStep):
    """Rescale spatial axes (anti-aliased)."""

    op: Literal["rescale"]
    factor: Union[Annotated[float, Field(gt=0)], list[Annotated[float, Field(gt=0)]]] = Field(
        ..., description="Factor for Y and X, or one per spatial axis (Z, Y, X).")
    order: int = Field(1, ge=0, le=5, description="Spline order (0 nearest, 1 linear, 3 cubic).")
    anti_aliasing: bool = Field(True, description="Smooth before shrinking.")
    _function = staticmethod(rs.rescale)


class BinStep(_ReshapeStep):
    """Bin pixels in blocks."""

    op: Literal["bin"]
    factor: Union[Annotated[int, Field(ge=1)], list[Annotated[int, Field(ge=1)]]] = Field(
        2, description="Block size for Y and X, or one per spatial axis.")
    reduce: Literal["mean", "sum", "max", "min"] = Field("mean", description="How a block is reduced.")
    _function = staticmethod(rs.bin_image)


class SelectZStep(_ReshapeStep):
    """Keep a z range (start:stop:step)."""

    op: Literal["select_z"]
    start: int = Field(0, description="First plane.")
    stop: Optional[int] = Field(None, description="End plane (exclusive), None for the last.")
    step: int = Field(1, ge=1, description="Take every step-th plane.")
    _function = staticmethod(rs.select_z)


class ProjectStep(_ReshapeStep):
    """Z projection over all planes or sliding windows."""

    op: Literal["project"]
    method: Literal["max", "min", "sum", "mean", "median"] = Field("max", description="Projection.")
    window: Optional[int] = Field(None, ge=1, description="Planes per projection (None: all).")
    step: Optional[int] = Field(None, ge=1, description="Planes between windows (default window).")
    _function = staticmethod(rs.z_project)


class SelectChannelsStep(_ReshapeStep):
    """Keep one channel (removes C) or several."""

    op: Literal["select_channels"]
    channels: Union[int, list[int]] = Field(..., description="Channel index or list of indices.")
    _function = staticmethod(rs.select_channels)


class RgbToGreyStep(_ReshapeStep):
    """RGB to grey (luminance, float32)."""

    op: Literal["rgb_to_grey"]
    _function = staticmethod(rs.rgb_to_grey)


class ColorDeconvolutionStep(_ReshapeStep):
    """H&E(-DAB) colour deconvolution (Ruifrok & Johnston)."""

    op: Literal["color_deconvolution"]
    stain: Literal["haematoxylin", "hematoxylin", "eosin", "dab", "all"] = Field(
        "haematoxylin", description="Stain to keep, or all three as channels.")
    _function = staticmethod(rs.color_deconvolution)


_STEP_MODELS: list[type[_Step]] = [
    NoneStep, MedianStep, MeanStep, GaussianStep, SubtractConstantStep, RollingBallStep, WhiteTophatStep,
    ClaheStep, SobelStep, RobertsStep, InvertStep, NormalizeStep, ToDtypeStep,
    RescaleStep, BinStep, SelectZStep, ProjectStep, SelectChannelsStep, RgbToGreyStep, ColorDeconvolutionStep,
]

_AnyStep = Annotated[Union[tuple(_STEP_MODELS)], Field(discriminator="op")]  # type: ignore[valid-type]


class PipelineStep(RootModel[_AnyStep]):  # type: ignore[valid-type]
    """One validated step: ``{"op": NAME, **params}``.

    Examples
    --------
    >>> s = PipelineStep.of("gaussian", sigma=2)
    >>> s.op, s.params()
    ('gaussian', {'sigma': 2.0})
    """

    @classmethod
    def of(cls, op: str, **params: Any) -> "PipelineStep":
        """Build a step from an operation name and parameters."""
        return cls.model_validate({"op": op, **params})

    @property
    def op(self) -> str:
        """The operation name."""
        return self.root.op

    def params(self) -> dict[str, Any]:
        """The operation's parameters."""
        return self.root.params()

    def apply(self, data: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
        """Apply this step to ``data`` with canonical ``axes``; returns ``(data, axes)``."""
        return self.root.apply(data, axes)


class Pipeline(BaseModel):
    """A named, ordered list of preprocessing steps.

    Examples
    --------
    >>> p = Pipeline(name="grey", steps=[{"op": "rgb_to_grey"}, {"op": "normalize"}])
    >>> out, axes = p.apply(np.zeros((4, 4, 3), np.uint8), "YXC")
    >>> out.dtype.name, axes
    ('float32', 'YX')
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field("none", description="Name (used in output file and folder names).")
    steps: list[PipelineStep] = Field(default_factory=list, description="Operations in order.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", v):
            raise ValueError("must start with a letter or digit and use only letters, digits and _ . + -")
        return v

    def apply(self, image: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
        """Run all steps; returns ``(data, axes)``. Errors name the step."""
        data = np.asarray(image)
        if len(axes) != data.ndim:
            raise ValueError(f"pipeline {self.name!r}: axes {axes!r} do not match an image of shape {data.shape}")
        for i, step in enumerate(self.steps):
            try:
                data, axes = step.apply(data, axes)
            except ValueError as exc:
                raise ValueError(f"pipeline {self.name!r} step {i} ({step.op}): {exc}") from exc
        return data, axes

    def apply_image(self, image: "Image") -> "Image":
        """Run all steps on an :class:`~opsef_orchestrator.io.Image`, keeping path and pixel size."""
        data, axes = self.apply(image.data, image.axes)
        out = image.with_data(data, axes)
        out.metadata["pipeline"] = self.name
        return out

    @classmethod
    def from_steps(cls, name: str, *steps: tuple[str, dict[str, Any]] | str) -> "Pipeline":
        """Build from ``("op", {params})`` tuples or op names.

        Examples
        --------
        >>> Pipeline.from_steps("p", ("median", {"size": 5}), "sobel").steps[1].op
        'sobel'
        """
        out = []
        for s in steps:
            op, params = (s, {}) if isinstance(s, str) else s
            out.append({"op": op, **params})
        return cls(name=name, steps=out)  # type: ignore[arg-type]


# ------------------------------------------------------------------ registry


@dataclasses.dataclass(frozen=True)
class PipelineOperation:
    """An operation usable in a pipeline.

    Attributes
    ----------
    name : str
    kind : {"filter", "reshape"}
        Filters work per channel/time (and per plane or volume); reshape
        operations take the whole image and its axes.
    model : type
        The pydantic model of a step (its JSON schema documents the parameters).
    function : callable
        The pure function.
    supports_volume : bool
        Whether the operation works on 3D volumes (filters; reshape ops: True).
    default_mode : str
        ``"plane"``, ``"volume"`` (filters) or ``"whole"`` (reshape).
    output_dtype : str
        ``"same"``, a dtype name or a note.
    description : str
    """

    name: str
    kind: Literal["filter", "reshape"]
    model: type[BaseModel]
    function: Callable[..., Any]
    supports_volume: bool
    default_mode: str
    output_dtype: str
    description: str

    def parameters_schema(self) -> dict[str, Any]:
        """JSON schema of the parameters (without ``op``)."""
        schema = self.model.model_json_schema()
        props = {k: v for k, v in schema.get("properties", {}).items() if k != "op"}
        return {"type": "object", "properties": props, "required": [r for r in schema.get("required", []) if r != "op"],
                "additionalProperties": False}


def _registry() -> dict[str, PipelineOperation]:
    reg: dict[str, PipelineOperation] = {}
    reshape_dtypes = {"rescale": "same", "bin": "float32 (mean), wider int (sum), same (max/min)",
                      "select_z": "same", "project": "same (max/min), wider (sum), float32 (mean/median)",
                      "select_channels": "same", "rgb_to_grey": "float32", "color_deconvolution": "float32"}
    for model in _STEP_MODELS:
        name = model.model_fields["op"].annotation.__args__[0]  # type: ignore[union-attr]
        if issubclass(model, _FilterStep):
            op = pp.OPERATIONS[name]
            reg[name] = PipelineOperation(name, "filter", model, op.function, op.supports_volume, op.default_mode,
                                          op.output_dtype, op.description)
        else:
            fn = model._function  # type: ignore[attr-defined]
            fn = getattr(fn, "__func__", fn)
            reg[name] = PipelineOperation(name, "reshape", model, fn, True, "whole", reshape_dtypes[name],
                                          (model.__doc__ or "").strip().splitlines()[0])
    return reg


#: Every pipeline operation by name.
PIPELINE_OPERATIONS: dict[str, PipelineOperation] = _registry()


def apply_filter(name: str, data: np.ndarray, axes: str, mode: Mode = "auto", **params: Any) -> tuple[np.ndarray, str]:
    """Apply a filter operation per time point and channel, per plane or per volume.

    Examples
    --------
    >>> out, axes = apply_filter("median", np.zeros((2, 5, 5, 3), np.uint8), "ZYXC", size=3)
    >>> out.shape, axes
    ((2, 5, 5, 3), 'ZYXC')
    """
    op = pp.OPERATIONS.get(name)
    if op is None:
        raise ValueError(f"unknown filter {name!r}; known: {sorted(pp.OPERATIONS)}")
    if mode == "auto":
        mode = op.default_mode
    if mode not in ("plane", "volume"):
        raise ValueError(f"{name}: mode must be 'auto', 'plane' or 'volume', got {mode!r}")
    if mode == "volume" and "Z" in axes and not op.supports_volume:
        raise ValueError(f"{name} works on 2D planes only; use mode 'plane'")
    data = np.asarray(data)
    if len(axes) != data.ndim:
        raise ValueError(f"{name}: axes {axes!r} do not match an image of shape {data.shape}")
    spatial = "ZYX" if (mode == "volume" and "Z" in axes) else "YX"
    loop = [a for a in axes if a not in spatial]
    order = [axes.index(a) for a in loop] + [axes.index(a) for a in spatial]
    work = data.transpose(order)
    nloop = len(loop)
    out: np.ndarray | None = None
    for idx in np.ndindex(*work.shape[:nloop]):
        result = op.function(work[idx], **params)
        if result.shape != work.shape[nloop:]:
            raise ValueError(f"{name}: result shape {result.shape} differs from input {work.shape[nloop:]}")
        if out is None:
            out = np.empty(work.shape, result.dtype)
        out[idx] = result
    assert out is not None
    return np.ascontiguousarray(out.transpose(np.argsort(order))), axes


def parse_step(text: str) -> PipelineStep:
    """Parse a command-line step ``"op"`` or ``"op:key=value,key=value"`` (values read as YAML).

    Examples
    --------
    >>> parse_step("clahe:tile_grid=[4,4],clip_limit=0.02").params()
    {'tile_grid': [4, 4], 'clip_limit': 0.02, 'nbins': 256}
    """
    import yaml

    op, _, rest = text.partition(":")
    params: dict[str, Any] = {}
    if rest.strip():
        # split on commas not inside brackets
        parts, depth, cur = [], 0, ""
        for ch in rest:
            if ch in "[(":
                depth += 1
            elif ch in "])":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        parts.append(cur)
        for part in parts:
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"step {text!r}: expected key=value, got {part!r}")
            params[key.strip()] = yaml.safe_load(value.strip())
    return PipelineStep.of(op.strip(), **params)


def operations_reference() -> str:
    """A Markdown reference of all pipeline operations and their parameters (for the docs).

    Examples
    --------
    >>> "| median |" in operations_reference()
    True
    """
    lines = ["| op | kind | 3D | default mode | output dtype | parameters | description |",
             "|---|---|---|---|---|---|---|"]
    for name, op in PIPELINE_OPERATIONS.items():
        schema = op.parameters_schema()["properties"]
        params = []
        for key, prop in schema.items():
            default = op.model.model_fields[key].default
            shown = "required" if op.model.model_fields[key].is_required() else json.dumps(default)
            params.append(f"`{key}` ({shown}): {prop.get('description', '')}".strip())
        lines.append(f"| {name} | {op.kind} | {'yes' if op.supports_volume else 'no'} | {op.default_mode} | "
                     f"{op.output_dtype} | {'<br>'.join(params) or '-'} | {op.description} |")
    return "\n".join(lines)


# ------------------------------------------------------------------ preprocess command configuration


class ReadOptions(BaseModel):
    """How to read each input image (see :func:`opsef_orchestrator.io.read_image`)."""

    model_config = ConfigDict(extra="forbid")

    axes: Optional[str] = Field(None, description="Stored axes when the file's metadata is missing or wrong.")
    series: Optional[Union[int, str]] = Field(None, description="Series index or name (LIF, OME).")
    channel: Optional[Union[int, list[int]]] = Field(None, description="Channel(s) to keep.")
    time: Optional[int] = Field(None, description="Time point to keep.")
    z: Optional[Union[int, list[Optional[int]]]] = Field(None, description="Plane or [start, stop(, step)].")
    memmap: bool = Field(False, description="Memory-map large images.")

    @field_validator("z")
    @classmethod
    def _z(cls, v: Any) -> Any:
        if isinstance(v, list) and not 1 <= len(v) <= 3:
            raise ValueError("must be a plane index or [start, stop] or [start, stop, step]")
        return v

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`~opsef_orchestrator.io.read_image`."""
        d = self.model_dump()
        if isinstance(d["z"], list):
            d["z"] = tuple(d["z"])
        return d


def check_unique_names(pipelines: list[Pipeline]) -> None:
    """Raise ValueError naming the pipeline names used more than once (they name output folders).

    Examples
    --------
    >>> check_unique_names([Pipeline(name="a"), Pipeline(name="a")])
    Traceback (most recent call last):
    ...
    ValueError: pipeline names must be unique, repeated: ['a']
    """
    names = [p.name for p in pipelines]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"pipeline names must be unique, repeated: {dup}")


class PreprocessConfig(BaseModel):
    """Configuration of ``opsef-orchestrate preprocess``.

    Examples
    --------
    >>> c = PreprocessConfig.model_validate({"input": "in", "output": "out",
    ...                                       "pipelines": [{"name": "m", "steps": [{"op": "median"}]}]})
    >>> c.pipelines[0].steps[0].op
    'median'
    """

    model_config = ConfigDict(extra="forbid")

    input: Path = Field(..., description="An image file or a folder of images.")
    output: Path = Field(..., description="Folder for the preprocessed images (one sub-folder per pipeline).")
    include: list[str] = Field(default_factory=list, description="Patterns a file must match (folders).")
    exclude: list[str] = Field(default_factory=list, description="Patterns that drop a file (folders).")
    recursive: bool = Field(False, description="Also look in sub-folders.")
    read: ReadOptions = Field(default_factory=ReadOptions)
    pipelines: list[Pipeline] = Field(..., min_length=1, description="Pipelines to run on every image.")

    @field_validator("include", "exclude", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _unique(self) -> "PreprocessConfig":
        check_unique_names(self.pipelines)
        return self
