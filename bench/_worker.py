"""In-process side of the benchmarks: runs with a *service's* Python (never the orchestrator's).

Started by :class:`bench.common.InprocWorker` as
``<service env>/bin/python bench/_worker.py`` with
``PYTHONPATH=protos/src:services/<name>/src``. It reads one JSON command per
line on stdin and answers one JSON line on stdout, prefixed with
:data:`REPLY_PREFIX` (frameworks may print their own lines). Commands:

``{"op": "init", "service_dir": ..., "threads": N}``
    Configure the framework exactly as ``opsef_protocol.serve`` does.
``{"op": "predict", "model": ..., "image": "x.npy", "axes": ..., "params": {...}}``
    Time ``Adapter.predict`` alone (validation and default merging, done by the
    server before its own predict timer, are done here before the timer too).
``{"op": "native_loop", "model": ..., "images": [...], "out_dir": ..., "params": {...}}``
    Time the tool's own loop over image files: read, grey, normalise,
    ``StarDist2D.predict_instances`` or ``CellposeModel.eval``, write the labels
    as TIFF.

Only numpy, the protocol package, the service's adapter and its framework are
imported here.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPLY_PREFIX = "@@OPSEF-BENCH@@ "

_state: dict[str, Any] = {"adapters": {}, "native": {}}


def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(REPLY_PREFIX + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _init(cmd: dict[str, Any]) -> dict[str, Any]:
    from opsef_protocol.manifest import load_service_spec
    from opsef_protocol.serve import redirect_caches

    service_dir = Path(cmd["service_dir"]).resolve()
    spec = load_service_spec(service_dir)
    for key, value in spec.env.items():
        os.environ.setdefault(key, value)
    threads = int(cmd.get("threads", 0))
    cache_base = Path(os.environ.get("OPSEF_CACHE", Path.home() / ".cache" / "opsef"))
    cache_dir = (cache_base / "frameworks" / spec.name).resolve()
    redirect_caches(cache_dir)
    if threads > 0:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
            os.environ[var] = str(threads)
    from opsef_protocol.adapter import RuntimeOptions
    from opsef_protocol.manifest import ModelRegistry

    module_name, class_name = spec.adapter.split(":")
    adapter_cls = getattr(importlib.import_module(module_name), class_name)
    runtime = RuntimeOptions(device=cmd.get("device", "auto"), threads=threads, cache_dir=cache_dir,
                             options=dict(spec.adapter_options))
    info = adapter_cls.runtime_info(runtime)
    _state.update(spec=spec, adapter_cls=adapter_cls, runtime=runtime,
                  registry=ModelRegistry(service_dir / spec.models_dir, family=adapter_cls.family))
    return {"framework": info.framework, "framework_version": info.framework_version, "device": info.device,
            "threads": threads, "pid": os.getpid()}


def _adapter(name: str) -> Any:
    from opsef_protocol.manifest import verify_weights

    if name not in _state["adapters"]:
        registry = _state["registry"]
        manifest = registry.get(name)
        folder = registry.folder(name)
        verify_weights(manifest, folder)
        adapter = _state["adapter_cls"](manifest, folder, _state["runtime"])
        adapter.load()
        _state["adapters"][name] = adapter
    return _state["adapters"][name]


def _predict(cmd: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from opsef_protocol.adapter import validate_image
    from opsef_protocol.params import validate_params

    adapter = _adapter(cmd["model"])
    image = np.load(cmd["image"])
    axes = cmd["axes"]
    image = validate_image(image, axes, adapter.manifest)
    merged = {**adapter.manifest.defaults, **validate_params(cmd.get("params") or {})}
    c0, t0 = time.process_time(), time.perf_counter()
    labels = adapter.predict(image, axes, merged)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": seconds, "cpu_s": cpu, "objects": int(labels.max()) if labels.size else 0,
            "shape": list(labels.shape)}


def _read_grey(path: str) -> Any:
    import numpy as np

    if path.lower().endswith((".tif", ".tiff")):
        import tifffile

        img = tifffile.imread(path)
    else:
        try:
            import imageio.v2 as imageio

            img = imageio.imread(path)
        except ImportError:  # the Cellpose environment reads with OpenCV (through Cellpose's own io)
            from cellpose import io as cp_io

            img = cp_io.imread(path)
            if img.ndim == 3 and img.shape[-1] >= 3:
                img = img[..., [2, 1, 0] + list(range(3, img.shape[-1]))]  # BGR(A) -> RGB(A)
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        img = img[..., :3].astype(np.float32).mean(axis=-1)
    return img


def _native_loop(cmd: dict[str, Any]) -> dict[str, Any]:
    """The tool's own loop, as a user of StarDist or Cellpose would write it."""
    import numpy as np
    import tifffile

    name = cmd["model"]
    family = _state["adapter_cls"].family
    adapter = _adapter(name)
    params = {**adapter.manifest.defaults, **(cmd.get("params") or {})}
    out_dir = Path(cmd["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    if family == "stardist":
        from csbdeep.utils import normalize
        from stardist.models import StarDist2D

        if name not in _state["native"]:
            folder = adapter.folder
            _state["native"][name] = StarDist2D(None, name=folder.name, basedir=str(folder.parent))
        model = _state["native"][name]

        def segment(img: Any) -> Any:
            x = normalize(img, params.get("norm_percentile_low", 1.0), params.get("norm_percentile_high", 99.8), axis=(0, 1))
            return model.predict_instances(x, prob_thresh=params.get("prob_threshold"), nms_thresh=params.get("nms_threshold"),
                                           show_tile_progress=False, verbose=False)[0]
    elif family == "cellpose":
        model = adapter._model  # the CellposeModel the adapter built from the same weights

        def segment(img: Any) -> Any:
            # the starter's manifest asks for bright-background images to be inverted (options.invert: auto):
            # a user of this model does the same, with the same rule
            planes = np.stack([img, np.zeros_like(img)], axis=-1).astype(np.float32)
            norm = {"normalize": bool(params.get("normalize", True)), "invert": adapter._invert(planes),
                    "percentile": [float(params.get("norm_percentile_low", 1.0)), float(params.get("norm_percentile_high", 99.0))]}
            return model.eval(img, channels=[0, 0], diameter=None, rescale=float(params.get("scale", 1.0)), normalize=norm,
                              flow_threshold=float(params.get("flow_threshold", 0.4)),
                              cellprob_threshold=float(params.get("cellprob_threshold", 0.0)),
                              min_size=int(params.get("min_size", 15)))[0]
    else:
        raise ValueError(f"no native loop for family {family!r}")
    per_image, predict = [], []
    c0, t0 = time.process_time(), time.perf_counter()
    for path in cmd["images"]:
        ti = time.perf_counter()
        img = _read_grey(path)
        tp = time.perf_counter()
        labels = np.asarray(segment(img))
        predict.append(time.perf_counter() - tp)
        tifffile.imwrite(out_dir / (Path(path).stem + ".tif"), labels.astype(np.uint16 if labels.max() < 65536 else np.uint32))
        per_image.append(time.perf_counter() - ti)
    return {"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "per_image": per_image,
            "predict_s": sum(predict)}


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    ops = {"init": _init, "predict": _predict, "native_loop": _native_loop}
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        cmd = json.loads(line)
        if cmd.get("op") == "quit":
            _reply({"ok": True})
            return 0
        try:
            _reply({"ok": True, **ops[cmd["op"]](cmd)})
        except Exception as exc:  # noqa: BLE001 - reported to the harness, which raises
            _reply({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
