"""Declarative, validated manifests: one per model folder, one per service.

A model is a folder inside a service's models directory holding
``manifest.yaml`` and its weight files. Adding a model means dropping such a
folder: no code. Manifests are validated strictly (unknown keys rejected).

Examples
--------
>>> m = ModelManifest.model_validate({
...     "name": "demo", "version": "1", "family": "stardist", "framework": "tensorflow",
...     "source": "project", "dims": [2], "axes": ["YX"],
...     "weights": [{"path": "weights.h5", "sha256": 64 * "0"}]})
>>> m.dims, m.weights[0].path
([2], 'weights.h5')
>>> ModelManifest.model_validate({"name": "demo", "colour": "blue"})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
pydantic_core._pydantic_core.ValidationError: ...
Extra inputs are not permitted...
"""
from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from opsef_protocol.errors import InvalidArgument, ModelNotFound, WeightsUnavailable
from opsef_protocol.params import PARAMETER_NAMES, validate_params

__all__ = [
    "MANIFEST_FILE",
    "SERVICE_FILE",
    "NAME_PATTERN",
    "WeightFile",
    "ModelManifest",
    "ServiceSpec",
    "ModelRegistry",
    "ManifestError",
    "load_manifest",
    "load_service_spec",
    "sha256_file",
    "verify_weights",
]

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.yaml"
SERVICE_FILE = "service.yaml"
#: Model and service names: letters, digits, '_', '-', '.', not starting with '.'.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_NAME_RE = re.compile(NAME_PATTERN)


class ManifestError(ValueError):
    """A manifest file that cannot be read or does not validate; names the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WeightFile(_Strict):
    """One weight file of a model, relative to the model folder, with its sha256."""

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("path")
    @classmethod
    def _inside(cls, v: str) -> str:
        p = Path(v)
        if p.is_absolute() or ".." in p.parts or not v:
            raise ValueError(f"weight path {v!r} must be relative and inside the model folder")
        return v


class ModelManifest(_Strict):
    """What a model folder's ``manifest.yaml`` holds."""

    schema_version: Literal[1] = 1
    name: str = Field(pattern=NAME_PATTERN)
    version: str
    #: Adapter family that runs it: "stardist", "cellpose", "unet", ...
    family: str
    framework: str
    #: "project": trained by OpSeF's own command; "published": a framework's
    #: pretrained model loaded by name; "user": anything else.
    source: Literal["project", "published", "user"]
    description: str = ""
    dims: list[Literal[2, 3]]
    #: Accepted input axes, e.g. ["YX", "YXC"].
    axes: list[str]
    channels: int = Field(1, ge=1, le=16)
    #: Smallest accepted spatial size; smaller images are padded by the adapter.
    min_size_px: int = Field(1, ge=1)
    #: For source == "published": the name the framework's own loader knows.
    published_name: str | None = None
    weights: list[WeightFile] = []
    defaults: dict[str, Any] = {}
    #: Family-specific settings (network config, tile size, ...).
    options: dict[str, Any] = {}
    training: dict[str, Any] = {}
    #: Validation metrics, e.g. {"dsb2018_val/f1@0.5": 0.84}.
    metrics: dict[str, float] = {}

    @field_validator("axes")
    @classmethod
    def _axes(cls, v: list[str]) -> list[str]:
        for a in v:
            if not re.fullmatch(r"Z?YXC?", a):
                raise ValueError(f"axes entry {a!r} must be one of YX, YXC, ZYX, ZYXC")
        return v

    @field_validator("defaults")
    @classmethod
    def _defaults(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - set(PARAMETER_NAMES))
        if unknown:
            raise ValueError(f"unknown default parameter(s) {unknown}")
        return validate_params(v)

    @model_validator(mode="after")
    def _published(self) -> "ModelManifest":
        if self.source == "published" and not self.published_name:
            raise ValueError("a published model needs 'published_name'")
        if self.source != "published" and not self.weights:
            raise ValueError("a project or user model lists its weight files under 'weights'")
        return self


class ServiceSpec(_Strict):
    """What a service folder's ``service.yaml`` holds.

    A second service of the same family (another pin, another environment) is
    another folder with its own ``service.yaml`` and ``requirements.txt``.
    """

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    #: "module:Class" of the adapter; the module must import no framework at import time.
    adapter: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    framework: str
    requirements: str = "requirements.txt"
    python: str = "3.11"
    #: Folders (relative to the service folder) put on PYTHONPATH.
    python_path: list[str] = ["src"]
    models_dir: str = "models"
    default_port: int = Field(ge=1024, le=65535)
    env: dict[str, str] = {}
    #: Options passed to the adapter (e.g. a Cellpose release's model names).
    adapter_options: dict[str, Any] = {}


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML ({exc})") from None


def _validate(cls: type[BaseModel], path: Path) -> Any:
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a mapping at the top level")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise ManifestError(f"{path}: {problems}") from None


def load_manifest(folder: str | Path) -> ModelManifest:
    """Read and validate ``folder/manifest.yaml``; the name must equal the folder name."""
    folder = Path(folder)
    manifest = _validate(ModelManifest, folder / MANIFEST_FILE)
    if manifest.name != folder.name:
        raise ManifestError(f"{folder / MANIFEST_FILE}: name {manifest.name!r} differs from its folder {folder.name!r}")
    return manifest


def load_service_spec(folder: str | Path) -> ServiceSpec:
    """Read and validate ``folder/service.yaml``."""
    return _validate(ServiceSpec, Path(folder) / SERVICE_FILE)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_weights(manifest: ModelManifest, folder: Path) -> None:
    """Check every weight file exists and matches its sha256, before anything loads it.

    Raises
    ------
    WeightsUnavailable
        Naming the missing or corrupt file.
    """
    for w in manifest.weights:
        path = folder / w.path
        if not path.is_file():
            raise WeightsUnavailable(
                f"model {manifest.name!r}: weight file {path} is missing; "
                "restore the model folder or retrain it with the command in its manifest's 'training' section"
            )
        actual = sha256_file(path)
        if actual != w.sha256:
            raise WeightsUnavailable(
                f"model {manifest.name!r}: weight file {path} is corrupt (sha256 {actual[:12]}... "
                f"!= manifest {w.sha256[:12]}...); restore or retrain it"
            )


class ModelRegistry:
    """The models of one service: every valid folder in a models directory.

    Folders whose manifest does not validate are skipped with a warning (and
    listed in :attr:`problems`), so one bad folder never takes a service down.
    """

    def __init__(self, root: str | Path, family: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.family = family
        self.problems: dict[str, str] = {}
        self._manifests: dict[str, ModelManifest] = {}
        self.refresh()

    def refresh(self) -> None:
        """Rescan the models directory."""
        manifests: dict[str, ModelManifest] = {}
        problems: dict[str, str] = {}
        if self.root.is_dir():
            for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and (p / MANIFEST_FILE).is_file()):
                try:
                    m = load_manifest(folder)
                except ManifestError as exc:
                    problems[folder.name] = str(exc)
                    logger.warning("skipping model folder: %s", exc)
                    continue
                if self.family and m.family != self.family:
                    problems[folder.name] = f"family {m.family!r} is not {self.family!r}"
                    continue
                manifests[m.name] = m
        self._manifests, self.problems = manifests, problems

    @property
    def names(self) -> list[str]:
        return sorted(self._manifests)

    def manifests(self) -> list[ModelManifest]:
        return [self._manifests[n] for n in self.names]

    def folder(self, name: str) -> Path:
        """The folder of a model, strictly inside the models directory."""
        self.get(name)
        folder = (self.root / name).resolve()
        if folder.parent != self.root:
            raise InvalidArgument(f"model name {name!r} resolves outside the models directory")
        return folder

    def get(self, name: str) -> ModelManifest:
        """The manifest of a model by name.

        Raises
        ------
        InvalidArgument
            If ``name`` is not a plain model name (paths, ``..``).
        ModelNotFound
            If no such model exists; the message lists the known ones.
        """
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise InvalidArgument(f"model name {name!r} is not valid: use letters, digits, '_', '-', '.' (no paths)")
        if name not in self._manifests:
            self.refresh()
        if name not in self._manifests:
            known = ", ".join(self.names) or "none"
            raise ModelNotFound(f"unknown model {name!r}; known models: {known}")
        return self._manifests[name]

    def weights_present(self, name: str) -> bool:
        m = self.get(name)
        return bool(m.weights) and all((self.root / name / w.path).is_file() for w in m.weights)
