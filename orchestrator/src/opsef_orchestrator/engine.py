"""The run engine: inputs x pipelines x models x parameters, fanned out to the services.

- Every job's result is cached by content (input bytes and read options,
  pipeline, model and version and weights hash, parameters, tiling): re-running
  a finished run does no inference, and an interrupted run (Ctrl-C, kill -9, a
  service crash) resumes where it stopped. Files are written to a temporary
  name and renamed, so nothing half-written is ever seen.
- Each service gets at most ``execution.max_in_flight`` requests at once, from
  its own queue; the main thread reads and preprocesses the next images while
  services predict, up to ``execution.read_ahead_mb`` of preprocessed images
  ahead, so a fast service does not wait for a slow one.
- Images larger than ``tiling.tile_size`` are tiled with overlap, segmented
  tile by tile and stitched without seams (objects across borders are one).
- A local service that dies is restarted and its jobs retried; a job that
  still fails is recorded with its reason and the run goes on.

Output layout of a run folder (``<outputs.root>/<name>-<YYYYmmdd-HHMMSS>/``)::

    run.yaml                       resolved configuration (rerun: opsef-orchestrate run RUN/run.yaml)
    record.json                    versions, weight hashes, host, timings per job and stage, status
    jobs.jsonl                     journal: one line per finished job (resume reads it)
    inputs.csv                     inputs as used (path, sha256, shape, axes, pixel size)
    preprocessed/<pipeline>/<stem>.tif
    labels/<combination>/<stem>.tif      combination = <pipeline>__<service>-<model>__<parameters>
    tables/evaluation.csv, tables/leaderboard.csv, tables/objects.csv
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import datetime as dt
import errno
import hashlib
import json
import logging
import os
import platform
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import yaml

from opsef_protocol.manifest import sha256_file

from opsef_orchestrator import __version__
from opsef_orchestrator.cache import LABEL_MODULES, ContentCache, code_digest, link_or_copy
from opsef_orchestrator.client import SegmentError, SegmenterClient
from opsef_orchestrator.config import RunConfig
from opsef_orchestrator.io import atomic_path, list_images, read_image, write_image, write_labels
from opsef_orchestrator.io.writers import BLOCK_BYTES, max_label, release_pages
from opsef_orchestrator.manager import ServiceManager
from opsef_orchestrator.pipelines import Pipeline
from opsef_orchestrator.segmentation import ModelRef, parse_model_ref, service_input
from opsef_orchestrator.tiling import Tile, stitch_labels, tile_grid

__all__ = ["ImageItem", "Job", "Plan", "RunResult", "RunError", "make_plan", "run", "combination_name"]

logger = logging.getLogger(__name__)
#: Write errors that are the output folder's fault, not a job's: the run stops (resumable) instead of failing every job.
_OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


class RunError(RuntimeError):
    """A run that cannot start (bad inputs, missing models, services unreachable)."""


@dataclasses.dataclass(frozen=True)
class ImageItem:
    path: Path
    stem: str
    input_index: int
    ground_truth: Path | None


@dataclasses.dataclass(frozen=True)
class Job:
    image: ImageItem
    pipeline: Pipeline
    ref: ModelRef
    params: dict[str, Any]

    @property
    def combination(self) -> str:
        return combination_name(self.pipeline.name, self.ref, self.params)

    @property
    def id(self) -> str:
        return f"{self.image.stem}/{self.combination}"


@dataclasses.dataclass
class Plan:
    images: list[ImageItem]
    combinations: list[tuple[Pipeline, ModelRef, dict[str, Any]]]

    @property
    def jobs(self) -> Iterator[Job]:
        for img in self.images:
            for pipe, ref, params in self.combinations:
                yield Job(img, pipe, ref, params)

    @property
    def n_jobs(self) -> int:
        return len(self.images) * len(self.combinations)

    @property
    def services(self) -> list[str]:
        return sorted({ref.service for _, ref, _ in self.combinations})

    def describe(self, cfg: RunConfig) -> str:
        n_param = sum(len(m.parameter_sets()) for m in cfg.models)
        lines = [
            f"run {cfg.name!r}: {len(self.images)} images x {len(cfg.pipelines)} pipelines x {n_param} model/parameter sets "
            f"= {self.n_jobs} jobs",
            f"services needed: {', '.join(self.services)}",
        ]
        for m in cfg.models:
            sets = m.parameter_sets()
            lines.append(f"  {m.model}: {len(sets)} parameter set(s) {sets if len(sets) <= 6 else ''}".rstrip())
        lines.append(f"pipelines: {', '.join(p.name for p in cfg.pipelines)}")
        lines.append(f"ground truth: {'yes' if cfg.ground_truth else 'no'}; outputs under {cfg.outputs.root}")
        return "\n".join(lines)


@dataclasses.dataclass
class RunResult:
    run_dir: Path
    record: dict[str, Any]
    failed: list[dict[str, Any]]
    evaluation: Any = None

    @property
    def ok(self) -> bool:
        return not self.failed


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "T" if v else "F"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "x".join(_fmt(x) for x in v)
    return str(v)


def combination_name(pipeline: str, ref: ModelRef, params: dict[str, Any]) -> str:
    """Folder-safe name of a pipeline x model x parameters combination.

    Examples
    --------
    >>> combination_name("median3", ModelRef("cellpose", "nuclei"), {"scale": 0.6})
    'median3__cellpose-nuclei__scale0.6'
    >>> combination_name("none", ModelRef("stardist", "m"), {})
    'none__stardist-m__default'
    """
    p = "_".join(f"{k}{_fmt(v)}" for k, v in sorted(params.items())) or "default"
    return f"{pipeline}__{ref.service}-{ref.model}__{p}"


def make_plan(cfg: RunConfig) -> Plan:
    """Resolve the inputs (folders, patterns, ground truth) and the combinations; reads no pixels."""
    images: list[ImageItem] = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(cfg.inputs):
        if spec.path.is_dir():
            paths = list_images(spec.path, spec.include or None, spec.exclude or None, recursive=spec.recursive)
            if not paths:
                raise RunError(f"inputs[{i}].path {spec.path}: no images match include={spec.include} exclude={spec.exclude}")
        elif spec.path.is_file():
            paths = [spec.path]
        else:
            raise RunError(f"inputs[{i}].path {spec.path}: no such file or folder")
        for p in paths:
            stem = p.stem
            if stem in seen:
                seen[stem] += 1
                stem = f"{stem}__{seen[stem]}"
            else:
                seen[stem] = 0
            gt = None
            if cfg.ground_truth is not None:
                cand = cfg.ground_truth.path / cfg.ground_truth.pattern.format(stem=p.stem)
                gt = cand if cand.is_file() else None
                if gt is None:
                    logger.warning("no ground truth for %s (looked for %s)", p, cand)
            images.append(ImageItem(p.resolve(), stem, i, gt))
    combos = [(pipe, parse_model_ref(m.model), params) for pipe in cfg.pipelines for m in cfg.models for params in m.parameter_sets()]
    return Plan(images, combos)


# ---------------------------------------------------------------------------- services
class _ServicePool:
    """One client per service; restarts dead local services and swaps their client."""

    def __init__(self, cfg: RunConfig, manager: ServiceManager) -> None:
        self.cfg = cfg
        self.manager = manager
        self.lock = threading.Lock()
        self.clients: dict[str, SegmenterClient] = {}
        self.generation: dict[str, int] = {}

    def _new_client(self, target: str) -> SegmenterClient:
        ex = self.cfg.execution
        return SegmenterClient(target, timeout=ex.timeout_s, attempts=min(ex.attempts, 3), max_backoff=4.0)

    def start(self, services: list[str]) -> None:
        eps = self.manager.endpoints()
        missing = [s for s in services if s not in eps]
        if missing:
            if not self.cfg.execution.start_services:
                raise RunError(f"services not running and start_services is false: {', '.join(missing)}")
            try:
                eps.update(self.manager.up(missing))
            except Exception as exc:  # noqa: BLE001 - surfaced as one message
                raise RunError(f"could not start services {missing}: {exc}") from None
        for s in services:
            self.clients[s] = self._new_client(eps[s])
            self.generation[s] = 0

    def client(self, service: str) -> tuple[SegmenterClient, int]:
        with self.lock:
            return self.clients[service], self.generation[service]

    def fallback(self, service: str) -> SegmenterClient | None:
        """Client of the CPU replica of ``service`` (``execution.cpu_fallback``), if the run names one."""
        target = (self.cfg.execution.cpu_fallback or {}).get(service)
        if not target:
            return None
        with self.lock:
            key = f"{service}@cpu-fallback"
            if key not in self.clients:
                self.clients[key] = self._new_client(target)
                self.generation[key] = 0
            return self.clients[key]

    def recover(self, service: str, generation: int) -> None:
        """After UNAVAILABLE: restart the local service if it died (once per failure generation)."""
        with self.lock:
            if self.generation[service] != generation:
                return  # another worker already recovered it
            if service in self.manager.explicit or not self.cfg.execution.restart_dead_services:
                return
            if self.manager.running(service):
                return
            logger.warning("service %s is down: restarting it", service)
            target = self.manager.ensure_running(service)
            old = self.clients[service]
            self.clients[service] = self._new_client(target)
            self.generation[service] += 1
            old.close()

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


# ---------------------------------------------------------------------------- helpers
def _job_base(job: Job) -> dict[str, Any]:
    return {"id": job.id, "image": str(job.image.path), "stem": job.image.stem, "pipeline": job.pipeline.name,
            "model": str(job.ref), "params": job.params, "combination": job.combination}


class _Journal:
    """Append-only job journal (one JSON line per finished job), safe against kill -9 mid-line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()

    def read(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill: ignored, the job is redone (or found in the cache)
                out[entry["id"]] = entry
        return out

    def append(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, default=str) + "\n").encode()
        with self.lock, open(self.path, "ab+") as fh:
            if fh.seek(0, os.SEEK_END) and (fh.seek(-1, os.SEEK_END), fh.read(1))[1] != b"\n":
                line = b"\n" + line  # a line cut by a kill or a full disk must not swallow this entry
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


def _input_info(img: Any) -> dict[str, Any]:
    """The columns of ``inputs.csv`` that come from the pixels: shape, axes, pixel size."""
    return {"shape": list(img.shape), "axes": img.axes,
            "pixel_size": list(img.pixel_size) if img.pixel_size is not None else None}


class _ReadAhead:
    """Bytes of preprocessed images held for jobs not yet finished; the reader waits while more than a budget is held.

    Each service takes its jobs from its own queue (its executor), so while a
    slow service works through its backlog the reader keeps reading ahead for
    the fast ones, up to the budget. The image just read always goes out, so a
    single image larger than the budget still runs.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.held = 0
        self._left: dict[int, list[int]] = {}
        self._next = 0
        self._cond = threading.Condition()

    def hold(self, data: np.ndarray, jobs: int) -> int:
        """Hold ``data`` until ``jobs`` calls of :meth:`release` with the returned token."""
        with self._cond:
            self._next += 1
            self._left[self._next] = [jobs, int(data.nbytes)]
            self.held += int(data.nbytes)
            return self._next

    def release(self, token: int) -> None:
        with self._cond:
            left = self._left[token]
            left[0] -= 1
            if left[0] == 0:
                self.held -= left[1]
                del self._left[token]
                self._cond.notify_all()

    def wait(self, stop: Callable[[], bool]) -> None:
        """Block while more than the budget is held (or until ``stop()``)."""
        with self._cond:
            while self.held > self.budget and not stop():
                self._cond.wait(0.5)


class _Progress:
    def __init__(self, total: int, callback: Callable[[str], None] | None) -> None:
        self.total, self.callback = total, callback
        self.done = self.failed = self.cached = 0
        self.per_model: dict[str, int] = {}
        self.t0 = time.monotonic()
        self.last = 0.0
        self.lock = threading.Lock()

    def update(self, model: str, status: str) -> None:
        with self.lock:
            self.done += 1
            self.failed += status == "failed"
            self.cached += status == "cached"
            self.per_model[model] = self.per_model.get(model, 0) + 1
            now = time.monotonic()
            if self.callback and (now - self.last > 2.0 or self.done == self.total):
                self.last = now
                self.callback(self.line())

    def line(self) -> str:
        el = time.monotonic() - self.t0
        rate = self.done / el if el > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        models = ", ".join(f"{k} {v}" for k, v in sorted(self.per_model.items()))
        return (f"{self.done}/{self.total} jobs ({self.cached} cached, {self.failed} failed), {rate:.2f} jobs/s, "
                f"ETA {eta:.0f} s [{models}]")


# ---------------------------------------------------------------------------- segmentation
#: Tile requests of one job in flight at once: the next tiles are predicted while a result is stitched.
TILES_IN_FLIGHT = 2


class _PagedLabels(np.memmap):
    """A shared memory map that hands its pages back to the page cache after every assignment.

    :func:`~opsef_orchestrator.tiling.stitch_labels` zeroes the output, writes
    each tile's core and renumbers tile by tile through ``out[...] = ...``;
    releasing the pages after each assignment (a whole-array fill is done in
    blocks of rows) keeps this process's resident memory at about a tile's
    pages, not the image's (see :func:`~opsef_orchestrator.io.writers.release_pages`).
    """

    def __setitem__(self, key: Any, value: Any) -> None:
        if key is Ellipsis and np.ndim(value) == 0 and self.ndim > 0 and self.shape[0] > 1:
            step = max(1, BLOCK_BYTES // max(1, self.nbytes // self.shape[0]))
            for i in range(0, self.shape[0], step):
                super().__setitem__(slice(i, i + step), value)
                release_pages(self[i:i + step])
            return
        super().__setitem__(key, value)
        target = super().__getitem__(key)  # the pages written: a view for basic indexing, else all of this array
        release_pages(target if isinstance(target, np.ndarray) and np.may_share_memory(target, self) else self)


def _segment_tiled(client: SegmenterClient, data: np.ndarray, axes: str, model: str, params: dict[str, Any],
                   tile: int, overlap: int, z_tile: int, request_id: str,
                   scratch: Path | None = None,
                   gate: threading.BoundedSemaphore | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """Segment ``data`` whole, or tile by tile when larger than ``tile`` (stitched into a memory map at ``scratch``).

    Tiles are requested :data:`TILES_IN_FLIGHT` at a time and stitched in
    order. Pages of a memory-mapped ``data`` and of the stitched memory map are
    released as the tiles go, so the resident memory is bounded by the tile
    size, not the image size. ``gate`` (the service's ``execution.max_in_flight``
    permits, shared by all its jobs) bounds the requests in flight to it.
    """
    gate = gate if gate is not None else contextlib.nullcontext()
    spatial = data.shape[: len(axes.replace("C", ""))]
    timings = {"predict_s": 0.0, "requests": 0}
    ny, nx = spatial[-2:]
    if max(ny, nx) <= tile and (z_tile == 0 or len(spatial) == 2 or spatial[0] <= z_tile):
        with gate:
            res = client.segment(data, axes, model, params, request_id=request_id)
        return res.labels, {"predict_s": res.timings["predict_s"], "requests": 1, "model_version": res.model_version}
    tile_shape = ((spatial[0] if not z_tile else min(z_tile, spatial[0])),) * (len(spatial) - 2) + (min(tile, ny), min(tile, nx))
    ov = ((overlap if z_tile else 0),) * (len(spatial) - 2) + (overlap, overlap)
    grid = tile_grid(spatial, tile_shape, ov)
    version = ""

    def fetch(t: Tile) -> Any:
        view = data[t.read]
        part = np.ascontiguousarray(view)
        release_pages(view)  # a memory-mapped input keeps its pages in the page cache, not in this process
        with gate:
            return client.segment(part, axes, model, params, request_id=f"{request_id}@{t.index}")

    def results(pool: cf.ThreadPoolExecutor) -> Iterator[tuple[Tile, np.ndarray]]:
        nonlocal version
        pending = [pool.submit(fetch, t) for t in grid[:TILES_IN_FLIGHT]]
        try:
            for i, t in enumerate(grid):
                res = pending.pop(0).result()
                if i + TILES_IN_FLIGHT < len(grid):
                    pending.append(pool.submit(fetch, grid[i + TILES_IN_FLIGHT]))
                timings["predict_s"] += res.timings["predict_s"]
                timings["requests"] += 1
                version = res.model_version
                yield t, res.labels
        finally:  # failed (a tile, or the stitching): drop the requests not started yet
            for f in pending:
                f.cancel()

    out = None
    if scratch is not None:  # bounded memory: the stitched labels live on disk, not in RAM
        scratch.parent.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.uint32, shape=tuple(spatial)).view(_PagedLabels)
    with cf.ThreadPoolExecutor(TILES_IN_FLIGHT, thread_name_prefix=f"opsef-tiles-{request_id}") as pool:
        tiles = results(pool)
        try:
            labels = stitch_labels(tiles, spatial, out=out)
        finally:
            tiles.close()
    timings["model_version"] = version
    return labels, timings


# ---------------------------------------------------------------------------- run
def _new_run_dir(root: Path, name: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(100):
        d = root / (f"{name}-{stamp}" if i == 0 else f"{name}-{stamp}-{i}")
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
    raise RunError(f"cannot create a new run folder under {root}")


def _write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _model_infos(pool: _ServicePool, plan: Plan) -> tuple[dict[str, Any], dict[str, Any]]:
    import grpc

    services: dict[str, Any] = {}
    models: dict[str, Any] = {}
    for s in plan.services:
        client, _ = pool.client(s)
        try:
            info = client.info()
            listed = {m.name: m for m in client.models()}
        except grpc.RpcError as exc:
            raise RunError(f"service {s} at {client.target} is not usable: {exc.code().name}: {exc.details()}") from None
        services[s] = {"endpoint": client.target, "framework": info.framework, "framework_version": info.framework_version,
                       "device": info.device, "protocol_version": info.protocol_version,
                       "library_versions": dict(info.library_versions)}
        for _, ref, _ in plan.combinations:
            if ref.service != s or str(ref) in models:
                continue
            m = listed.get(ref.model)
            if m is None:
                raise RunError(f"model {ref} not found; {s} has: {', '.join(sorted(listed))}")
            if not m.weights_present:
                raise RunError(f"model {ref}: weights are missing ({m.weights_location}); see `opsef-orchestrate doctor`")
            models[str(ref)] = {"version": m.version, "source": m.source, "weights_sha256": m.weights_sha256,
                                "dims": list(m.dims), "axes": list(m.axes)}
    return services, models


def run(
    cfg: RunConfig,
    *,
    manager: ServiceManager | None = None,
    run_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    config_text: str | None = None,
) -> RunResult:
    """Execute a run configuration; returns where it went and what failed.

    ``run_dir`` continues an existing run folder (resume); by default a new one
    is created and never overwrites another.
    """
    from opsef_orchestrator import postrun

    t_start = time.time()
    plan = make_plan(cfg)
    manager = manager or ServiceManager(endpoints=cfg.endpoints)
    if cfg.endpoints:
        manager.explicit.update(cfg.endpoints)
    pool = _ServicePool(cfg, manager)
    pool.start(plan.services)
    try:
        services, models = _model_infos(pool, plan)
        run_dir = Path(run_dir) if run_dir else _new_run_dir(cfg.outputs.root, cfg.name)
        run_dir.mkdir(parents=True, exist_ok=True)
        store = ContentCache(cfg.outputs.root / ".cache")
        resolved = cfg.model_dump(mode="json")
        _write_text_atomic(run_dir / "run.yaml", config_text or yaml.safe_dump(resolved, sort_keys=False))
        journal = _Journal(run_dir / "jobs.jsonl")
        done = {k: v for k, v in journal.read().items() if v.get("status") in ("ok", "cached")}
        prog = _Progress(plan.n_jobs, progress)
        failed: list[dict[str, Any]] = []
        entries: dict[str, dict[str, Any]] = dict(done)
        elock = threading.Lock()
        output_errors: list[OSError] = []  # disk full / read-only output: stop the run, journal nothing more
        stage = {"read_preprocess_s": 0.0}
        inputs_rows: list[dict[str, Any]] = []
        read_ahead = _ReadAhead(cfg.execution.read_ahead_mb << 20)
        # execution.max_in_flight requests per service at once, whether from whole images or from the tiles of one
        gates = {s: threading.BoundedSemaphore(cfg.execution.max_in_flight) for s in plan.services}
        executors = {s: cf.ThreadPoolExecutor(cfg.execution.max_in_flight, thread_name_prefix=f"opsef-{s}") for s in plan.services}
        futures: list[cf.Future] = []

        # unique per run() call: two sessions of one process in the same second (a resume right after a stop) differ
        session = f"{dt.datetime.fromtimestamp(t_start).isoformat(timespec='seconds')}/{os.getpid()}/{uuid.uuid4().hex[:8]}"

        def finish(job: Job, entry: dict[str, Any]) -> None:
            entry["session"] = session
            journal.append(entry)
            with elock:
                entries[job.id] = entry
                if entry["status"] == "failed":
                    failed.append(entry)
            prog.update(str(job.ref), entry["status"])

        def work(job: Job, data: np.ndarray, axes: str, key: str, out: Path, token: int,
                 pixel_size: tuple[float | None, float | None, float | None] | None) -> None:
            t0 = time.perf_counter()
            base = {**_job_base(job), "key": key}
            cached = store.path("labels", key, ".tif")
            scratch = store.root / "scratch" / f"{key}.{os.getpid()}.npy"
            try:
                tile = cfg.tiling.tile_size
                recovery, fallback = 0, None
                while True:  # out of memory: smaller tiles, then the CPU replica (execution.cpu_fallback)
                    client, gen = (fallback, -1) if fallback is not None else pool.client(job.ref.service)
                    try:
                        labels, timings = _segment_tiled(client, data, axes, job.ref.model, job.params, tile,
                                                         min(cfg.tiling.overlap, tile // 4), cfg.tiling.z_tile_size, job.id,
                                                         scratch, gates[job.ref.service] if fallback is None else None)
                        break
                    except SegmentError as exc:
                        if exc.reason == "out_of_memory" and fallback is None and tile > 128:
                            tile //= 2
                            logger.warning("%s: out of memory; retrying with %d-pixel tiles", job.id, tile)
                            continue
                        if exc.reason == "out_of_memory" and fallback is None and pool.fallback(job.ref.service):
                            fallback, tile = pool.fallback(job.ref.service), cfg.tiling.tile_size
                            logger.warning("%s: out of memory at the smallest tiles; retrying on the CPU endpoint %s",
                                           job.id, fallback.target)
                            continue
                        if exc.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED") and recovery < 3 \
                                and fallback is None:
                            pool.recover(job.ref.service, gen)
                            time.sleep(1.0 + recovery)
                            recovery += 1
                            continue
                        raise
                write_labels(cached, labels, pixel_size=pixel_size)  # calibrated like the image the model saw
                link_or_copy(cached, out)
                finish(job, {**base, "status": "ok", "labels": str(out.relative_to(run_dir)), "seconds": round(time.perf_counter() - t0, 3),
                             "predict_s": round(timings["predict_s"], 3), "requests": timings["requests"],
                             "objects": max_label(labels), "model_version": timings.get("model_version", ""),
                             "tile_size": tile, **({"cpu_fallback": fallback.target} if fallback is not None else {})})
            except SegmentError as exc:
                finish(job, {**base, "status": "failed", "error": f"{exc.code.name}: {exc.details}", "seconds": round(time.perf_counter() - t0, 3)})
            except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                if isinstance(exc, OSError) and exc.errno in _OUTPUT_ERRNOS:
                    output_errors.append(exc)  # not the job's fault: it stays undone, a resume redoes it
                    return
                logger.exception("job %s failed", job.id)
                finish(job, {**base, "status": "failed", "error": f"{type(exc).__name__}: {exc}", "seconds": round(time.perf_counter() - t0, 3)})
            finally:
                with contextlib.suppress(OSError):
                    scratch.unlink()
                read_ahead.release(token)

        try:
            for item in plan.images:
                if output_errors:
                    break
                jobs_all = [Job(item, p, r, pr) for p, r, pr in plan.combinations]
                for j in jobs_all:
                    if j.id in done:
                        prog.update(str(j.ref), "cached")
                todo = [j for j in jobs_all if j.id not in done]
                t0 = time.perf_counter()
                try:
                    digest = sha256_file(item.path)
                except OSError as exc:
                    for j in todo:
                        finish(j, {**_job_base(j), "status": "failed", "error": f"{item.path}: cannot read ({exc.strerror})"})
                    continue
                read_opts = cfg.inputs[item.input_index].read
                keyed: list[tuple[Job, str, Path]] = []
                for j in todo:
                    key_src = {"input": digest, "read": read_opts.model_dump(mode="json"),
                               "pipeline": j.pipeline.model_dump(mode="json"), "model": str(j.ref),
                               "model_info": models[str(j.ref)], "params": j.params,
                               "tiling": cfg.tiling.model_dump(mode="json"), "code": code_digest(*LABEL_MODULES)}
                    key = hashlib.sha256(json.dumps(key_src, sort_keys=True, default=str).encode()).hexdigest()
                    keyed.append((j, key, run_dir / "labels" / j.combination / f"{item.stem}.tif"))
                # Jobs whose result is in the content cache need no pixels at all.
                pending: dict[str, list[tuple[Job, str, Path]]] = {}
                for j, key, out in keyed:
                    cached = store.path("labels", key, ".tif")
                    if cached.is_file():
                        link_or_copy(cached, out)
                        finish(j, {**_job_base(j), "key": key, "status": "cached", "labels": str(out.relative_to(run_dir)), "seconds": 0.0})
                    else:
                        pending.setdefault(j.pipeline.name, []).append((j, key, out))
                # Preprocessed images in the content cache need no reading either.
                read_json = read_opts.model_dump(mode="json")
                pre_keys = {p.name: store.key("preprocessed", digest, read_json, p.model_dump(mode="json")) for p in cfg.pipelines}
                if cfg.outputs.preprocessed:
                    for p in cfg.pipelines:
                        target = run_dir / "preprocessed" / p.name / f"{item.stem}.tif"
                        if p.name not in pending and not target.is_file():
                            store.link_out("preprocessed", pre_keys[p.name], ".tif", target)
                want_pre = [p for p in cfg.pipelines if p.name in pending or (
                    cfg.outputs.preprocessed and not (run_dir / "preprocessed" / p.name / f"{item.stem}.tif").is_file())]
                input_key = store.key("input", digest, read_json)
                input_row = {"stem": item.stem, "path": str(item.path), "sha256": digest}
                if not want_pre:  # every result is known: the pixels are read only for inputs.csv, if ever
                    seen = store.get_json("input", input_key)
                    if seen is None:
                        with contextlib.suppress(Exception):  # unreadable now: its jobs are done, the row is left out
                            seen = _input_info(read_image(item.path, **read_opts.kwargs()))
                            store.put_json("input", input_key, seen)
                    if seen is not None:
                        inputs_rows.append({**input_row, **seen, "ground_truth": str(item.ground_truth or "")})
                    continue
                try:
                    img = read_image(item.path, **read_opts.kwargs())
                except Exception as exc:  # noqa: BLE001 - one bad input must not stop the run
                    for jobs in pending.values():
                        for j, key, out in jobs:
                            finish(j, {**_job_base(j), "key": key, "status": "failed", "error": str(exc)})
                    continue
                seen = _input_info(img)
                store.put_json("input", input_key, seen)
                inputs_rows.append({**input_row, **seen, "ground_truth": str(item.ground_truth or "")})
                for pipe in want_pre:
                    jobs = pending.get(pipe.name, [])
                    try:
                        pre = pipe.apply_image(img)
                        data, axes = service_input(pre, "inputs[].read.time")
                    except Exception as exc:  # noqa: BLE001
                        for j, key, out in jobs:
                            finish(j, {**_job_base(j), "key": key, "status": "failed", "error": f"preprocessing: {exc}"})
                        continue
                    if cfg.outputs.preprocessed:
                        target = run_dir / "preprocessed" / pipe.name / f"{item.stem}.tif"
                        if not target.is_file() and not store.link_out("preprocessed", pre_keys[pipe.name], ".tif", target):
                            write_image(store.path("preprocessed", pre_keys[pipe.name], ".tif"), pre.data, pre.axes, pre.pixel_size)
                            link_or_copy(store.path("preprocessed", pre_keys[pipe.name], ".tif"), target)
                    if jobs:
                        token = read_ahead.hold(data, len(jobs))
                        for j, key, out in jobs:
                            futures.append(executors[j.ref.service].submit(work, j, data, axes, key, out, token,
                                                                           pre.pixel_size))
                stage["read_preprocess_s"] += time.perf_counter() - t0
                read_ahead.wait(lambda: bool(output_errors))
            for f in futures:
                f.result()
            if output_errors:
                raise output_errors[0]
        finally:
            for ex in executors.values():
                ex.shutdown(wait=True, cancel_futures=True)
        t_infer = time.time()
        if inputs_rows:
            import pandas as pd

            from opsef_orchestrator.tables import write_table

            old = run_dir / "inputs.csv"
            rows = inputs_rows
            if old.is_file():
                prev = pd.read_csv(old)
                rows = [r for r in prev.to_dict("records") if r["stem"] not in {x["stem"] for x in inputs_rows}] + inputs_rows
            write_table(pd.DataFrame(rows), old)
        evaluation = postrun.finalize(cfg, plan, run_dir, entries, store)
        t_end = time.time()
        record = {
            "opsef_version": __version__,
            "status": "complete" if not failed else "failed",
            "session": session,
            "run_dir": str(run_dir),
            "started": dt.datetime.fromtimestamp(t_start).isoformat(timespec="seconds"),
            "finished": dt.datetime.fromtimestamp(t_end).isoformat(timespec="seconds"),
            "host": {"name": socket.gethostname(), "platform": platform.platform(), "python": sys.version.split()[0],
                     "cpus": os.cpu_count()},
            "config": resolved,
            "services": services,
            "models": models,
            "plan": {"images": len(plan.images), "combinations": len(plan.combinations), "jobs": plan.n_jobs},
            "counts": {"ok": sum(e["status"] == "ok" for e in entries.values()),
                       "cached": sum(e["status"] == "cached" for e in entries.values()), "failed": len(failed)},
            "cache": store.stats(),  # hits and misses of preprocessed images and analysis results (labels: counts)
            "stages": {"read_preprocess_s": round(stage["read_preprocess_s"], 3), "inference_wall_s": round(t_infer - t_start, 3),
                       "postprocess_s": round(t_end - t_infer, 3), "total_s": round(t_end - t_start, 3)},
            "jobs": sorted(entries.values(), key=lambda e: e["id"]),
            "failed": failed,
        }
        _write_text_atomic(run_dir / "record.json", json.dumps(record, indent=2, default=str))
        return RunResult(run_dir, record, failed, evaluation)
    except OSError as exc:
        if exc.errno not in _OUTPUT_ERRNOS:
            raise
        where = exc.filename or cfg.outputs.root
        again = f"; free space or fix permissions, then resume with --resume {run_dir}" if run_dir else ""
        raise RunError(f"cannot write outputs: {where}: {exc.strerror or exc}; everything written before is complete "
                       f"(atomic writes, journal){again}") from None
    finally:
        pool.close()
