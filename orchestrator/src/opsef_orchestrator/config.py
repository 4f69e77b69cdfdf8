"""The run configuration: one validated YAML file defines a run.

Unknown keys and bad values are rejected naming the key (pydantic,
``extra="forbid"``); ``--set key=value`` overrides any key from the command
line (dotted path, list items by index: ``models.0.grid.scale=[0.5,1.0]``).

Examples
--------
>>> cfg = RunConfig.model_validate({"name": "t", "inputs": [{"path": "img.tif"}],
...     "models": [{"model": "stardist:stardist_dsb2018_starter", "grid": {"prob_threshold": [0.4, 0.6]}}]})
>>> [m.parameter_sets() for m in cfg.models]
[[{'prob_threshold': 0.4}, {'prob_threshold': 0.6}]]
"""
from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, field_validator, model_validator

from opsef_protocol.params import validate_params

from opsef_orchestrator.pipelines import Pipeline, ReadOptions, check_unique_names
from opsef_orchestrator.segmentation import parse_model_ref

__all__ = [
    "ConfigError",
    "InputSpec",
    "GroundTruthSpec",
    "ModelSpec",
    "TilingSpec",
    "PostprocessSpec",
    "OutputSpec",
    "ExecutionSpec",
    "RunConfig",
    "load_config",
    "apply_overrides",
    "config_reference",
    "TEMPLATE",
]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"
#: Largest YAML file accepted, and the most aliases (defends against "billion laughs" anchors).
MAX_CONFIG_BYTES = 1_000_000
MAX_ALIASES = 100
#: Most values a document may expand to once aliases are followed (72 aliases can describe 9**9 values),
#: and the deepest nesting (deeper documents would overflow the parser's recursion).
MAX_EXPANDED_NODES = 100_000
MAX_DEPTH = 50


class ConfigError(ValueError):
    """A run configuration that cannot be read or does not validate; names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(_Strict):
    """Images to process: a file, or a folder with include/exclude patterns."""

    path: Path = Field(..., description="An image file or a folder of images.")
    include: list[str] = Field(default_factory=list, description="Glob patterns a file must match (folders).")
    exclude: list[str] = Field(default_factory=list, description="Glob patterns that drop a file (folders).")
    recursive: bool = Field(False, description="Also look in sub-folders.")
    read: ReadOptions = Field(default_factory=ReadOptions, description="Axes, series, channel, time, z selection.")

    @field_validator("include", "exclude", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class GroundTruthSpec(_Strict):
    """Ground-truth label images for evaluation, matched to inputs by file stem."""

    path: Path = Field(..., description="Folder of label images.")
    pattern: str = Field("{stem}.tif", description="File name of an input's labels; {stem} is the input's stem.")


class ModelSpec(_Strict):
    """One model with fixed parameters and a parameter grid (every combination is run)."""

    model: str = Field(..., description="SERVICE:MODEL, e.g. cellpose:cellpose_dsb2018_starter.")
    parameters: dict[str, Any] = Field(default_factory=dict, description="Fixed Segment parameters.")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="Parameter -> list of values to sweep.")

    @field_validator("model")
    @classmethod
    def _ref(cls, v: str) -> str:
        parse_model_ref(v)
        return v

    @field_validator("parameters")
    @classmethod
    def _params(cls, v: dict[str, Any]) -> dict[str, Any]:
        return validate_params(v)

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"grid {key!r} has no values")
            for value in values:
                validate_params({key: value})
        return v

    @model_validator(mode="after")
    def _no_overlap(self) -> "ModelSpec":
        both = sorted(set(self.parameters) & set(self.grid))
        if both:
            raise ValueError(f"parameter(s) {both} are both fixed and in the grid")
        return self

    def parameter_sets(self) -> list[dict[str, Any]]:
        """Every combination of the grid, each merged with the fixed parameters."""
        keys = list(self.grid)
        return [{**self.parameters, **dict(zip(keys, combo))} for combo in itertools.product(*(self.grid[k] for k in keys))]


class TilingSpec(_Strict):
    """Orchestrator-side tiling of images larger than a model should take at once."""

    tile_size: int = Field(2048, ge=64, le=65536, description="Tile edge (pixels) in Y and X; larger images are tiled.")
    overlap: int = Field(128, ge=0, le=4096, description="Overlap between tiles (pixels); > twice the largest object radius.")
    z_tile_size: int = Field(0, ge=0, description="Tile size along Z for volumes (0 = never tile Z).")

    @model_validator(mode="after")
    def _overlap(self) -> "TilingSpec":
        if self.overlap * 2 >= self.tile_size:
            raise ValueError(f"overlap ({self.overlap}) must be less than half the tile size ({self.tile_size})")
        return self


class MaskFilesSpec(_Strict):
    """User-provided mask images, matched to inputs by file stem."""

    path: Path = Field(..., description="Folder of mask images (boolean, or integer classes 0..255; 0 = no class).")
    pattern: str = Field("{stem}.tif", description="File name of an input's mask; {stem} is the input's stem.")


class ClassifySpec(_Strict):
    """Classes of objects from a mask: a user mask per input, or a mask made from a channel of the input."""

    mask: Optional[MaskFilesSpec] = Field(None, description="User-provided mask images (give this or channel).")
    channel: Optional[int] = Field(None, ge=0, description="Channel of the input file to make the mask from "
                                                          "(filter, threshold x factor, morphology); give this or mask.")
    filter: Literal["gaussian", "median", "none"] = Field("gaussian", description="Smoothing before the threshold.")
    sigma: float = Field(1.0, ge=0, le=100, description="Gaussian sigma or median radius.")
    method: Union[Literal["otsu", "li", "triangle", "yen", "mean", "isodata"], float] = Field(
        "otsu", description="Automatic threshold method, or a fixed threshold value.")
    factor: float = Field(1.0, gt=0, le=100, description="The threshold is multiplied by this (e.g. 1.2 = stricter).")
    opening: int = Field(0, ge=0, le=50, description="Radius of a binary opening of the mask (0 = none).")
    closing: int = Field(0, ge=0, le=50, description="Radius of a binary closing of the mask (0 = none).")
    fill_holes: bool = Field(True, description="Fill holes in the mask.")
    min_size: int = Field(0, ge=0, description="Remove mask components smaller than this (pixels).")
    assign: Literal["overlap", "centroid"] = Field(
        "overlap", description="overlap: the class covering most of the object (>= min_fraction); centroid: the "
                               "mask at the object's centroid.")
    min_fraction: float = Field(0.5, ge=0, le=1, description="Least covered fraction of an object (assign: overlap).")
    names: dict[int, str] = Field(default_factory=dict, description="Class -> name, e.g. {0: negative, 1: positive}.")

    @model_validator(mode="after")
    def _one_source(self) -> "ClassifySpec":
        if (self.mask is None) == (self.channel is None):
            raise ValueError("give exactly one of 'mask' (user mask images) or 'channel' (a mask made from a channel)")
        return self


class PostprocessSpec(_Strict):
    """Measurements, filters and classification applied to every label image."""

    measure: bool = Field(True, description="Measure every object (area, shape, intensity).")
    filters: dict[str, tuple[Optional[float], Optional[float]]] = Field(
        default_factory=dict, description="Property -> [min, max] (null = open); objects outside are removed.")
    intensity_image: str = Field("preprocessed", pattern="^(preprocessed|input)$",
                                 description="Intensities measured on the preprocessed or the input image (as read, "
                                             "all its channels; images whose shape differs from the labels are "
                                             "measured without intensities).")
    classify: Optional[ClassifySpec] = Field(None, description="Classes of objects by a mask (tables: class, "
                                                               "class_name; images: classes/).")


class OutputSpec(_Strict):
    """What each run writes, and where."""

    root: Path = Field(Path("runs"), description="Folder holding one sub-folder per run (relative to the configuration file).")
    preprocessed: bool = Field(True, description="Write the preprocessed images.")
    overlays: bool = Field(True, description="Write outline overlays and montages.")
    tables: bool = Field(True, description="Write per-object tables (CSV).")
    csv_dialect: str = Field("default", pattern="^(default|european)$", description="'european': ';' separator, ',' decimal.")
    parquet: bool = Field(False, description="Also write every table as parquet beside its CSV (typed, fast to load).")
    report: bool = Field(True, description="Write the self-contained HTML report.")


class ExecutionSpec(_Strict):
    """How jobs are sent to the services."""

    max_in_flight: int = Field(2, ge=1, le=256, description="Requests in flight per service.")
    read_ahead_mb: int = Field(
        1024, ge=1, le=1 << 20,
        description="Preprocessed images held for queued jobs, in MiB: the orchestrator reads ahead up to this much "
                    "so that a fast service never waits for a slow one (each service has its own queue).")
    timeout_s: float = Field(900.0, gt=0, description="Deadline of one Segment request.")
    attempts: int = Field(6, ge=1, le=50, description="Attempts per request on retryable errors (with backoff).")
    start_services: bool = Field(True, description="Start local services that are not running.")
    restart_dead_services: bool = Field(True, description="Restart a local service that died during the run.")
    cpu_fallback: Optional[dict[str, str]] = Field(
        None, description="Service -> endpoint of a CPU replica to use when a GPU runs out of memory.")


class RunConfig(_Strict):
    """A whole run: inputs x pipelines x models x parameters."""

    name: str = Field(..., pattern=_NAME, description="Run name (run folders are NAME-YYYYmmdd-HHMMSS).")
    inputs: list[InputSpec] = Field(..., min_length=1, description="Input files and folders.")
    ground_truth: Optional[GroundTruthSpec] = Field(None, description="Labels for evaluation (optional).")
    pipelines: list[Pipeline] = Field(default_factory=lambda: [Pipeline(name="none", steps=[])],
                                      description="Named preprocessing pipelines (default: one, 'none').")
    models: list[ModelSpec] = Field(..., min_length=1, description="Models and their parameter grids.")
    tiling: TilingSpec = Field(default_factory=TilingSpec, description="Tiling of large images by the orchestrator.")
    postprocess: PostprocessSpec = Field(default_factory=PostprocessSpec, description="Measurements and filters.")
    outputs: OutputSpec = Field(default_factory=OutputSpec, description="What is written, and where.")
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec, description="Concurrency, deadlines, retries.")
    endpoints: dict[str, str] = Field(default_factory=dict,
                                      description="Service -> gRPC target (else $OPSEF_ENDPOINTS, else local services).")

    @model_validator(mode="after")
    def _unique_pipelines(self) -> "RunConfig":
        check_unique_names(self.pipelines)
        return self


class _LimitedLoader(yaml.SafeLoader):
    """Safe YAML loader that refuses documents with many aliases (anchor bombs)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} YAML aliases: refusing (possible alias bomb)")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.YAMLError(f"nested more than {MAX_DEPTH} levels deep: refusing")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> Any:  # type: ignore[override]
        node = super().get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_EXPANDED_NODES:
            raise yaml.YAMLError(f"expands to more than {MAX_EXPANDED_NODES} values through its aliases: "
                                 "refusing (possible alias bomb)")
        return node


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Number of values ``node`` stands for with every alias expanded (shared nodes counted each time)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # a recursive anchor counts once instead of looping
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[key] = size
    return size


def _format_errors(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "<root>"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def _set_path(data: Any, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not re.fullmatch(r"\d+", key) or int(key) >= len(node):
                raise ConfigError(f"--set {dotted}: {key!r} is not an index of a list of {len(node)} items")
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
        else:
            raise ConfigError(f"--set {dotted}: {'.'.join(keys[:i])} is not a mapping or list")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a config mapping."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.load(raw, Loader=_LimitedLoader)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: value is not valid YAML ({exc})") from None
        _set_path(data, key.strip(), value)
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a run configuration; relative paths are relative to the file.

    Raises
    ------
    ConfigError
        Naming the file and the bad key.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a run configuration")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    try:
        data = yaml.load(text, Loader=_LimitedLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    data = apply_overrides(data, overrides or [])
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_format_errors(exc)}") from None
    base = path.resolve().parent
    for spec in cfg.inputs:
        spec.path = (base / spec.path).resolve() if not spec.path.is_absolute() else spec.path
    if cfg.ground_truth and not cfg.ground_truth.path.is_absolute():
        cfg.ground_truth.path = (base / cfg.ground_truth.path).resolve()
    classify = cfg.postprocess.classify
    if classify is not None and classify.mask is not None and not classify.mask.path.is_absolute():
        classify.mask.path = (base / classify.mask.path).resolve()
    if not cfg.outputs.root.is_absolute():
        cfg.outputs.root = (base / cfg.outputs.root).resolve()
    return cfg


def config_reference() -> str:
    """Markdown reference of every key, generated from the schema (so it cannot drift)."""
    lines = ["# Run configuration reference", "", "Generated from the schema by `opsef-orchestrate config-reference`.", ""]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            ann = field.annotation
            if name == "root" and issubclass(model, RootModel):
                continue  # a pipeline step: its operations are listed in the table below
            if field.is_required():
                default = "required"
            else:
                value = field.get_default(call_default_factory=True)
                default = "see below" if isinstance(value, BaseModel) else repr(value)
            lines.append(f"- `{key}` (default: {default}): {field.description or ''}")
            inner = getattr(ann, "__args__", None)
            candidates = [ann] + list(inner or [])
            for c in candidates:
                if isinstance(c, type) and issubclass(c, BaseModel):
                    walk(c, key + ("[]." if inner and getattr(ann, "__origin__", None) is list else "."))
                    break

    walk(RunConfig, "")
    lines += ["", "Preprocessing operations (`pipelines[].steps[]`):", ""]
    from opsef_orchestrator.pipelines import operations_reference

    lines.append(operations_reference())
    return "\n".join(lines) + "\n"


TEMPLATE = """\
# OpSeF run configuration. Validate with: opsef-orchestrate run THIS.yaml --dry-run
# Every key: opsef-orchestrate config-reference
name: my_sweep                       # run folders: <outputs.root>/my_sweep-YYYYmmdd-HHMMSS

inputs:                              # files or folders
  - path: ../shared/data/dsb2018/val/images
    include: ["*.png"]               # glob patterns (OpSeF's subset)
    exclude: []
    read: {}                         # axes / series / channel / time / z / memmap

ground_truth:                        # optional: enables evaluation and the leaderboard
  path: ../shared/data/dsb2018/val/masks
  pattern: "{stem}.tif"

pipelines:                           # named preprocessing pipelines (rows of the montage)
  - name: none
    steps: []
  - name: median3
    steps:
      - {op: median, size: 3}
  - name: clahe
    steps:
      - {op: clahe, tile_grid: 8, clip_limit: 0.01}

models:                              # SERVICE:MODEL, fixed parameters and a grid (columns)
  - model: stardist:stardist_dsb2018_starter
    parameters: {}
    grid: {prob_threshold: [0.4, 0.6]}
  - model: cellpose:cellpose_dsb2018_starter
    grid: {scale: [0.6, 1.0, 1.4]}   # OpSeF's Cellpose scale factor
  - model: unet:unet_dsb2018_starter

tiling: {tile_size: 2048, overlap: 128}
postprocess:
  filters: {}                        # e.g. {area: [20, null], circularity: [0.5, null]}
  # classify:                        # classes of objects by a mask (tables: class; images: classes/)
  #   channel: 1                     # a mask from channel 1 of the input: filter, threshold x factor
  #   method: otsu
  #   factor: 1.0
  #   # mask: {path: masks, pattern: "{stem}_mask.tif"}   # or the user's own mask images
  #   assign: overlap                # or centroid
  #   names: {0: negative, 1: positive}
outputs:
  root: runs
  csv_dialect: default               # or european (; and ,)
execution:
  max_in_flight: 2
  read_ahead_mb: 1024                # preprocessed images held for queued jobs
  timeout_s: 900
endpoints: {}                        # e.g. {stardist: "dns:///opsef-stardist:50051"}
"""
