"""Cellpose adapter: project/user CPnet models and Cellpose's published models.

PyTorch and Cellpose are imported lazily (in :meth:`CellposeAdapter.runtime_info`,
:meth:`CellposeAdapter.load` and :meth:`CellposeAdapter.predict`), never at
module import. Cellpose reads its model cache folder from the environment
variable ``CELLPOSE_LOCAL_MODELS_PATH`` when ``cellpose.models`` is first
imported, so the adapter sets it (to ``runtime.cache_dir / "cellpose"``) before
that import, and passes the folder explicitly when it loads a published model.

Family-specific switches come from ``runtime.options`` (``adapter_options`` in
``service.yaml``), overridden per model by the manifest's ``options``:

``allow_download`` (bool, default false)
    Let Cellpose download a published model that is not cached. Off by
    default: a service never touches the network unless told to.
``download_timeout_s`` (float, default 60)
    Socket timeout for that download.
``published_models`` (mapping)
    Published name -> ``{model_file, size_file, diam_mean}``; merged over the
    built-in table of Cellpose 3 (nuclei, cyto, cyto2, cyto3). Another Cellpose
    release (e.g. ``cpsam`` of Cellpose 4) is added here, not in code.
``published_loader`` ("model_type" or "path", default "model_type")
    Load a published model by name through ``CellposeModel(model_type=...)``
    (Cellpose 3) or by its cached file through ``CellposeModel(pretrained_model=path)``.
``bsize`` (int, 224), ``batch_size`` (int, 8), ``tile_overlap`` (float, 0.1),
``augment`` (bool, false), ``max_size_fraction`` (float, 0.4), ``niter`` (int, 0 = Cellpose's choice)
    Passed to ``CellposeModel.eval``.
``nbase`` (list of 4 ints), ``nchan`` (int, 2), ``weights_file`` (str)
    Network width and input channels of a project/user CPnet (manifest options).
``invert`` (false, true or "auto"; default false), ``invert_auto_threshold`` (0.5)
    Invert intensities before the network; "auto" does so for images with a
    bright background (brightfield, H&E) for models trained on bright objects.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import inspect
import logging
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np

from opsef_protocol.adapter import Adapter, RuntimeInfo, RuntimeOptions, relabel_sequential, resize_labels
from opsef_protocol.errors import InvalidArgument, OutOfMemory, WeightsUnavailable

__all__ = ["CellposeAdapter", "PUBLISHED_MODELS", "DEFAULT_NBASE", "cellpose_model_dir", "resolve_device"]

logger = logging.getLogger(__name__)

#: Width of Cellpose 3's default CPnet (after the input channels).
DEFAULT_NBASE: tuple[int, ...] = (32, 64, 128, 256)

#: Published Cellpose 3 models: cached file names (under Cellpose's model
#: folder, as https://www.cellpose.org/models/<file>) and mean diameter.
PUBLISHED_MODELS: dict[str, dict[str, Any]] = {
    "nuclei": {"model_file": "nucleitorch_0", "size_file": "size_nucleitorch_0.npy", "diam_mean": 17.0},
    "cyto": {"model_file": "cytotorch_0", "size_file": "size_cytotorch_0.npy", "diam_mean": 30.0},
    "cyto2": {"model_file": "cyto2torch_0", "size_file": "size_cyto2torch_0.npy", "diam_mean": 30.0},
    "cyto3": {"model_file": "cyto3", "size_file": "size_cyto3.npy", "diam_mean": 30.0},
}

_MODEL_URL = "https://www.cellpose.org/models"
_ENV_MODELS = "CELLPOSE_LOCAL_MODELS_PATH"
# Cellpose keeps its model folder in a module global; loads that change it are serialised.
_MODEL_DIR_LOCK = threading.Lock()


def cellpose_model_dir(runtime: RuntimeOptions) -> Path:
    """The folder this service caches Cellpose's published models in (and downloads to, if allowed).

    ``runtime.cache_dir/cellpose`` when the runtime has a cache folder, else
    ``$CELLPOSE_LOCAL_MODELS_PATH``, else Cellpose's own default ``~/.cellpose/models``.
    """
    if runtime.cache_dir is not None:
        return Path(runtime.cache_dir) / "cellpose"
    env = os.environ.get(_ENV_MODELS)
    if env:
        return Path(env)
    return Path.home() / ".cellpose" / "models"


def _cache_candidates(runtime: RuntimeOptions) -> list[Path]:
    """Folders searched for a cached published model (after the model folder)."""
    out = [cellpose_model_dir(runtime)]
    env = os.environ.get(_ENV_MODELS)
    if env and Path(env) not in out:
        out.append(Path(env))
    return out


def _prepare_environment(runtime: RuntimeOptions) -> None:
    """Point Cellpose's (and numba's, matplotlib's) caches into the cache folder before Cellpose is imported."""
    if runtime.cache_dir is None:
        return
    cache = Path(runtime.cache_dir)
    for var, sub in ((_ENV_MODELS, "cellpose"), ("NUMBA_CACHE_DIR", "numba"), ("MPLCONFIGDIR", "matplotlib")):
        os.environ.setdefault(var, str(cache / sub))


def resolve_device(spec: str) -> Any:
    """The ``torch.device`` for a runtime device string ("auto", "cpu", "cuda", "cuda:N").

    Raises
    ------
    InvalidArgument
        For an unknown string or a CUDA device torch cannot see.
    """
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InvalidArgument(f"device {spec!r} requested but torch {torch.__version__} sees no CUDA device")
        index = 0
        if ":" in spec:
            try:
                index = int(spec.split(":", 1)[1])
            except ValueError:
                raise InvalidArgument(f"device {spec!r} is not valid; use auto, cpu, cuda or cuda:N") from None
        if not 0 <= index < torch.cuda.device_count():
            raise InvalidArgument(f"device {spec!r}: torch sees {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(f"cuda:{index}")
    raise InvalidArgument(f"device {spec!r} is not valid; use auto, cpu, cuda or cuda:N")


def _import_cellpose() -> Any:
    """Import ``cellpose.models`` (and with it torch's MKL-DNN helpers) without their import-time deprecation noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        from cellpose import models, resnet_torch  # noqa: F401

    return models


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@contextlib.contextmanager
def _cellpose_model_dir(folder: Path) -> Iterator[None]:
    """Temporarily point Cellpose's model folder global at ``folder``."""
    from cellpose import models

    with _MODEL_DIR_LOCK:
        old = models.MODEL_DIR
        models.MODEL_DIR = Path(folder)
        try:
            yield
        finally:
            models.MODEL_DIR = old


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):  # pragma: no cover - torch always present here
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


_NARROW_NET_CLASS: Any = None
#: Images with Y or X below this are padded (reflected) before Cellpose sees them.
_MIN_YX = 16


def _pad_yx(x: np.ndarray, min_size: int) -> tuple[np.ndarray, tuple[slice, ...] | None]:
    """Pad the Y and X axes of a channels-last array (``YXC`` or ``ZYXC``) to at least ``min_size``.

    Returns the padded array and the slices that crop a label image back (None if not padded).
    """
    yx = (x.ndim - 3, x.ndim - 2)
    pads = [(0, 0)] * x.ndim
    for ax in yx:
        pads[ax] = (0, max(0, min_size - x.shape[ax]))
    if not any(p[1] for p in pads):
        return x, None
    mode = "reflect" if all(x.shape[ax] > 1 for ax in yx) else "edge"
    crop = tuple(slice(0, n) for n in x.shape[:-1])
    return np.pad(x, pads, mode=mode), crop


def _narrow_cpnet_class() -> Any:
    """A CPnet whose style vector is zero-padded to the 256 entries Cellpose 3's tiling code expects.

    ``cellpose.core.run_net`` / ``run_3D`` allocate 256 style entries, the
    default network's last width; a narrower network (``nbase[-1] < 256``)
    would not fit. The style only feeds the size model, which such a project
    model does not have, so the padding changes no result.
    """
    global _NARROW_NET_CLASS
    if _NARROW_NET_CLASS is None:
        import torch
        from cellpose.resnet_torch import CPnet

        class NarrowCPnet(CPnet):
            def forward(self, data: Any) -> Any:
                y, style, t0 = super().forward(data)
                if style.shape[-1] < 256:
                    style = torch.nn.functional.pad(style, (0, 256 - style.shape[-1]))
                return y, style, t0

        _NARROW_NET_CLASS = NarrowCPnet
    return _NARROW_NET_CLASS


@dataclasses.dataclass(frozen=True)
class _Configured:
    runtime: RuntimeOptions
    device: Any


class CellposeAdapter(Adapter):
    """Cellpose 2D/3D instance segmentation (flows + cell probability, CPnet).

    Project/user models are a CPnet weight file in the model folder (any width,
    given by the manifest's ``options.nbase``); published models are loaded by
    name from Cellpose's cache (never downloaded unless ``allow_download``).
    """

    family: ClassVar[str] = "cellpose"
    _configured: ClassVar[_Configured | None] = None
    _configure_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, manifest: Any, folder: Path, runtime: RuntimeOptions) -> None:
        super().__init__(manifest, folder, runtime)
        self._model: Any = None
        self._size_model: Any = None
        self._device: Any = None
        self._eval_lock = threading.Lock()
        self._eval_params: frozenset[str] = frozenset()

    # -- runtime -----------------------------------------------------------
    @classmethod
    def _configure(cls, runtime: RuntimeOptions) -> Any:
        """Set up torch once per process (device, threads, memory cap); return the device."""
        with cls._configure_lock:
            if cls._configured is not None and cls._configured.runtime == runtime:
                return cls._configured.device
            _prepare_environment(runtime)
            import torch

            device = resolve_device(runtime.device)
            if runtime.threads and runtime.threads > 0:
                torch.set_num_threads(int(runtime.threads))
            if runtime.memory_fraction and device.type == "cuda":
                if not 0.0 < runtime.memory_fraction <= 1.0:
                    raise InvalidArgument(f"memory_fraction must be in (0, 1], got {runtime.memory_fraction}")
                torch.cuda.set_per_process_memory_fraction(float(runtime.memory_fraction), device=device.index or 0)
            cls._configured = _Configured(runtime, device)
            logger.info("cellpose adapter: device %s, %d CPU threads", device, torch.get_num_threads())
            return device

    @classmethod
    def runtime_info(cls, runtime: RuntimeOptions) -> RuntimeInfo:
        device = cls._configure(runtime)
        import torch

        available = ["cpu"]
        if torch.cuda.is_available():
            available += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        versions = {
            "torch": torch.__version__,
            "cellpose": _version("cellpose"),
            "numpy": np.__version__,
        }
        return RuntimeInfo(
            framework="pytorch",
            framework_version=torch.__version__,
            device=str(device),
            devices_available=tuple(available),
            library_versions=versions,
            cpu_threads=torch.get_num_threads(),
        )

    # -- options -----------------------------------------------------------
    def option(self, key: str, default: Any = None) -> Any:
        """A switch from the manifest's options, else the service's adapter_options, else ``default``."""
        if key in self.manifest.options:
            return self.manifest.options[key]
        return self.runtime.options.get(key, default)

    def _published_entry(self) -> dict[str, Any]:
        name = self.manifest.published_name or ""
        table = {k: dict(v) for k, v in PUBLISHED_MODELS.items()}
        for key, value in (self.runtime.options.get("published_models") or {}).items():
            table[key] = {**table.get(key, {}), **dict(value)}
        entry = dict(table.get(name, {}))
        for key in ("model_file", "size_file", "diam_mean"):
            if key in self.manifest.options:
                entry[key] = self.manifest.options[key]
        if "model_file" not in entry:
            raise WeightsUnavailable(
                f"model {self.manifest.name!r}: published name {name!r} is not known to this service "
                f"(known: {', '.join(sorted(table))}); add it under adapter_options.published_models in service.yaml"
            )
        return entry

    # -- loading -----------------------------------------------------------
    def load(self) -> None:
        self._device = self._configure(self.runtime)
        models = _import_cellpose()

        self._eval_params = frozenset(inspect.signature(models.CellposeModel.eval).parameters)
        t0 = time.perf_counter()
        if self.manifest.source == "published":
            self._load_published()
        else:
            self._load_weights_file()
        logger.info(
            "cellpose model %s loaded on %s in %.2f s (diam_mean %.1f)",
            self.manifest.name, self._device, time.perf_counter() - t0, float(self._model.diam_mean),
        )

    def _load_weights_file(self) -> None:
        from cellpose import models

        name = self.option("weights_file") or self.manifest.weights[0].path
        path = self.folder / name
        if not path.is_file():
            raise WeightsUnavailable(f"model {self.manifest.name!r}: weight file {path} is missing")
        nchan = int(self.option("nchan", 2))
        nbase = [int(n) for n in self.option("nbase", list(DEFAULT_NBASE))]
        if len(nbase) != 4:
            raise WeightsUnavailable(f"model {self.manifest.name!r}: options.nbase must list 4 widths, got {nbase}")
        try:
            if tuple(nbase) == DEFAULT_NBASE:
                # Cellpose's own loader (works for any default-width CPnet file).
                model = models.CellposeModel(pretrained_model=str(path), device=self._device, nchan=nchan)
            else:
                # Cellpose 3 builds a default-width CPnet; swap in one of the manifest's width.
                model = models.CellposeModel(pretrained_model=False, device=self._device, nchan=nchan)
                net = _narrow_cpnet_class()([nchan, *nbase], 3, sz=3, mkldnn=model.mkldnn, max_pool=True).to(self._device)
                net.load_model(str(path), device=self._device)
                net.to(self._device)
                model.net = net
                model.net_ortho = None
                model.nbase = [nchan, *nbase]
                model.pretrained_model = str(path)
                model.diam_mean = float(net.diam_mean.data.cpu().numpy()[0])
                model.diam_labels = float(net.diam_labels.data.cpu().numpy()[0])
        except Exception as exc:  # unpickling, shape mismatch, missing keys: the file is not such a CPnet
            if _is_oom(exc):
                raise OutOfMemory(f"out of memory loading model {self.manifest.name!r} on {self._device}: {exc}") from exc
            raise WeightsUnavailable(
                f"model {self.manifest.name!r}: cannot load {path} as a CPnet with nchan={nchan}, nbase={nbase} ({exc})"
            ) from exc
        model.net.eval()
        self._model = model
        size_file = self.option("size_file")
        if size_file and (self.folder / size_file).is_file():
            self._size_model = models.SizeModel(cp_model=model, device=self._device, pretrained_size=str(self.folder / size_file))

    def _find_published(self, filename: str) -> Path | None:
        for folder in (self.folder, *_cache_candidates(self.runtime)):
            if (folder / filename).is_file():
                return folder
        return None

    def _unavailable(self, filename: str, cache: Path, why: str = "") -> WeightsUnavailable:
        name = self.manifest.published_name
        return WeightsUnavailable(
            f"published Cellpose model {name!r} is not cached{why}: {cache / filename} does not exist. "
            f"Get it on a machine with internet access from {_MODEL_URL}/{filename} and copy it into {cache} "
            f"(or into the model folder {self.folder}), e.g. "
            f"CELLPOSE_LOCAL_MODELS_PATH={cache} python -c \"from cellpose import models; models.CellposeModel(model_type='{name}')\"; "
            "or set adapter_options.allow_download: true in service.yaml"
        )

    def _load_published(self) -> None:
        from cellpose import models

        entry = self._published_entry()
        model_file = str(entry["model_file"])
        cache = cellpose_model_dir(self.runtime)
        folder = self._find_published(model_file)
        if folder is None:
            if not bool(self.option("allow_download", False)):
                raise self._unavailable(model_file, cache)
            folder = cache
            timeout = float(self.option("download_timeout_s", 60.0))
            try:
                cache.mkdir(parents=True, exist_ok=True)
                with _cellpose_model_dir(cache), _socket_timeout(timeout):
                    models.cache_model_path(model_file)
            except Exception as exc:  # network, TLS, HTTP, disk: all mean "not available"
                (cache / model_file).unlink(missing_ok=True)
                raise self._unavailable(model_file, cache, f" and downloading it failed ({type(exc).__name__}: {exc})") from exc
        diam_mean = float(entry.get("diam_mean", 30.0))
        nchan = int(self.option("nchan", 2))
        loader = str(self.option("published_loader", "model_type"))
        try:
            with _cellpose_model_dir(folder):
                if loader == "path":
                    model = models.CellposeModel(pretrained_model=str(folder / model_file), device=self._device,
                                                 nchan=nchan, diam_mean=diam_mean)
                else:
                    model = models.CellposeModel(model_type=self.manifest.published_name, device=self._device,
                                                 nchan=nchan, diam_mean=diam_mean)
        except Exception as exc:
            if _is_oom(exc):
                raise OutOfMemory(f"out of memory loading model {self.manifest.name!r} on {self._device}: {exc}") from exc
            raise WeightsUnavailable(
                f"published Cellpose model {self.manifest.published_name!r}: cannot load {folder / model_file} ({exc}); "
                "delete the file and fetch it again"
            ) from exc
        model.net.eval()
        self._model = model
        size_file = entry.get("size_file")
        size_folder = self._find_published(str(size_file)) if size_file else None
        if size_folder is not None:
            self._size_model = models.SizeModel(cp_model=model, device=self._device,
                                                pretrained_size=str(size_folder / str(size_file)))
        elif size_file:
            logger.info("no size model %s cached for %s: diameter 0 falls back to 'scale'", size_file, self.manifest.name)

    def unload(self) -> None:
        self._model = None
        self._size_model = None
        if self._device is not None and getattr(self._device, "type", "cpu") == "cuda":
            import torch

            torch.cuda.empty_cache()

    # -- prediction --------------------------------------------------------
    @property
    def diam_mean(self) -> float:
        """Diameter (pixels) the loaded network is tuned to."""
        return float(self._model.diam_mean)

    def _channels_last(self, image: np.ndarray, axes: str, channels: list[int]) -> np.ndarray:
        """Float32 array with the network's channels last: [cytoplasm or grey, nucleus or zeros]."""
        nchan = int(self.option("nchan", getattr(self._model, "nchan", 2)))
        img = np.asarray(image, dtype=np.float32)
        if "C" in axes:
            c = img.shape[-1]
            cyto, nuc = (list(channels) + [0, 0])[:2]
            if cyto > c or nuc > c:
                raise InvalidArgument(f"parameter 'channels' {channels} refers to a channel the image lacks (it has {c})")
            first = img[..., : min(c, 3)].mean(axis=-1) if cyto == 0 else img[..., cyto - 1]
            second = np.zeros_like(first) if nuc == 0 else img[..., nuc - 1]
        else:
            first, second = img, np.zeros_like(img)
        planes = [first, second] + [np.zeros_like(first)] * max(0, nchan - 2)
        return np.ascontiguousarray(np.stack(planes[:nchan], axis=-1))

    def _invert(self, x: np.ndarray) -> bool:
        """Whether to invert intensities (option ``invert``: false, true or "auto").

        "auto" inverts images with a bright background (dark objects), judged
        on the first network channel: median above ``invert_auto_threshold``
        (default 0.5) of its 1..99 percentile range. Brightfield/H&E images
        sit at 0.58..0.91 in dsb2018/train, fluorescence at 0.01..0.2.
        """
        mode = self.option("invert", False)
        if isinstance(mode, bool):
            return mode
        if str(mode).lower() != "auto":
            raise InvalidArgument(f"model option 'invert' must be true, false or 'auto', got {mode!r}")
        plane = x[..., 0]
        lo, hi, med = np.percentile(plane, [1.0, 99.0, 50.0])
        if hi <= lo:
            return False
        inv = bool((med - lo) / (hi - lo) > float(self.option("invert_auto_threshold", 0.5)))
        if inv:
            logger.info("bright background: inverting intensities (invert: auto)")
        return inv

    def _rescale(self, x2d: np.ndarray | None, params: dict[str, Any], normalize: dict[str, Any], eval_kw: dict[str, Any]) -> float:
        """Cellpose's resize factor from OpSeF's ``scale`` and Cellpose's ``diameter``.

        ``scale`` multiplies; ``diameter`` > 0 adds ``diam_mean / diameter``;
        ``diameter`` == 0 estimates it with the size model where one is loaded
        (2D only), else leaves ``scale`` alone.
        """
        scale = float(params.get("scale", 1.0))
        diameter = params.get("diameter")
        if diameter is None:
            return scale
        if diameter > 0:
            return scale * self.diam_mean / float(diameter)
        if self._size_model is not None and x2d is not None:
            diam, _ = self._size_model.eval(x2d, channels=None, channel_axis=-1, normalize=normalize,
                                            batch_size=eval_kw.get("batch_size", 8))
            diam = float(np.asarray(diam).ravel()[0])
            logger.info("estimated diameter %.1f px (model diam_mean %.1f)", diam, self.diam_mean)
            return scale * self.diam_mean / max(diam, 1.0)
        logger.info("diameter 0 but model %s has no size model (or input is 3D): using scale %.3g", self.manifest.name, scale)
        return scale

    def predict(self, image: np.ndarray, axes: str, params: dict[str, Any]) -> np.ndarray:
        if self._model is None:
            self.load()
        spatial = tuple(s for s, a in zip(image.shape, axes) if a != "C")
        if "C" in axes:
            flat = np.asarray(image).reshape(-1, image.shape[-1])
            constant = bool((flat == flat[:1]).all())
        else:
            constant = bool(np.all(image == image.flat[0]))
        if constant:
            logger.info("constant image: no objects")
            return np.zeros(spatial, np.uint32)

        channels = params.get("channels") or [0, 0]
        x = self._channels_last(image, axes, channels)
        x, crop = _pad_yx(x, max(_MIN_YX, int(self.manifest.min_size_px)))
        norm: dict[str, Any] = {"normalize": bool(params.get("normalize", True)), "invert": self._invert(x)}
        if "norm_percentile_low" in params or "norm_percentile_high" in params:
            norm["percentile"] = [float(params.get("norm_percentile_low", 1.0)), float(params.get("norm_percentile_high", 99.0))]
        eval_kw: dict[str, Any] = {
            "batch_size": int(self.option("batch_size", 8)),
            "bsize": int(self.option("bsize", 224)),
            "tile_overlap": float(self.option("tile_overlap", 0.1)),
            "augment": bool(self.option("augment", False)),
            "max_size_fraction": float(self.option("max_size_fraction", 0.4)),
            "flow_threshold": float(params.get("flow_threshold", 0.4)),
            "cellprob_threshold": float(params.get("cellprob_threshold", 0.0)),
            "min_size": int(params.get("min_size", 15)),
            "channels": None,
            "channel_axis": -1 if x.ndim == 3 else 3,
            "resample": True,
        }
        niter = int(self.option("niter", 0) or 0)
        if niter:
            eval_kw["niter"] = niter

        with self._eval_lock:
            try:
                if "Z" not in axes:
                    masks = self._eval_2d(x, params, norm, eval_kw)
                else:
                    masks = self._eval_3d(x, params, norm, eval_kw)
            except (InvalidArgument, WeightsUnavailable):
                raise
            except (RuntimeError, MemoryError) as exc:
                if _is_oom(exc):
                    self._empty_cache()
                    raise OutOfMemory(
                        f"out of memory segmenting an image of shape {tuple(image.shape)} on {self._device}; "
                        "use a smaller image or scale, or another device"
                    ) from exc
                raise
        masks = np.asarray(masks)
        if crop is not None:
            masks = masks.reshape(x.shape[:-1])[crop] if masks.size == int(np.prod(x.shape[:-1])) else masks
        if masks.shape != spatial:
            if masks.size == int(np.prod(spatial)):
                masks = masks.reshape(spatial)  # Cellpose squeezes length-1 axes
            elif masks.ndim == len(spatial):
                masks = resize_labels(masks, spatial)
            else:
                raise RuntimeError(f"cellpose returned masks of shape {masks.shape} for an image of spatial shape {spatial}")
        return relabel_sequential(masks).astype(np.uint32, copy=False)

    def _eval(self, x: np.ndarray, **kw: Any) -> np.ndarray:
        kw = {k: v for k, v in kw.items() if k in self._eval_params}
        with warnings.catch_warnings():
            # Cellpose 3.1's mask dynamics trigger this torch warning on every call.
            warnings.filterwarnings("ignore", message="Sparse invariant checks", category=UserWarning)
            return self._model.eval(x, **kw)[0]

    def _eval_2d(self, x: np.ndarray, params: dict[str, Any], norm: dict[str, Any], eval_kw: dict[str, Any]) -> np.ndarray:
        rescale = self._rescale(x, params, {**norm, "norm3D": False}, eval_kw)
        return self._eval(x, rescale=rescale, diameter=None, normalize={**norm, "norm3D": False}, **eval_kw)

    def _eval_3d(self, x: np.ndarray, params: dict[str, Any], norm: dict[str, Any], eval_kw: dict[str, Any]) -> np.ndarray:
        nz = x.shape[0]
        do_3d = bool(params.get("do_3d", False))
        stitch = float(params.get("stitch_threshold", 0.0))
        if nz == 1:
            return self._eval_2d(x[0], params, norm, {**eval_kw, "channel_axis": -1})[None]
        if do_3d:
            rescale = self._rescale(None, params, norm, eval_kw)
            anisotropy = params.get("anisotropy")
            return self._eval(x, rescale=rescale, diameter=None, normalize={**norm, "norm3D": True}, do_3D=True,
                              anisotropy=float(anisotropy) if anisotropy else None, z_axis=0, **eval_kw)
        if stitch > 0:
            rescale = self._rescale(None, params, norm, eval_kw)
            return self._eval(x, rescale=rescale, diameter=None, normalize={**norm, "norm3D": False},
                              stitch_threshold=stitch, z_axis=0, **eval_kw)
        # Neither: 2D per plane, labels made unique across the volume.
        logger.info("3D input without do_3d or stitch_threshold: segmenting %d planes independently", nz)
        out = np.zeros(x.shape[:3], np.uint32)
        offset = 0
        kw = {**eval_kw, "channel_axis": -1}
        for z in range(nz):
            plane = self._eval_2d(x[z], params, norm, kw).astype(np.uint32)
            plane[plane > 0] += offset
            out[z] = plane
            offset = max(offset, int(plane.max()))
        return out

    def _empty_cache(self) -> None:
        if self._device is not None and getattr(self._device, "type", "cpu") == "cuda":
            import torch

            torch.cuda.empty_cache()
