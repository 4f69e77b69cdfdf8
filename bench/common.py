"""Shared pieces of the OpSeF benchmarks: arguments, services, in-process workers, results.

Every benchmark is one command (``python bench/NAME.py [--quick]``) that prints
a table and writes ``<out>/<NAME>.json`` and ``<out>/<NAME>.md``. Figures are
ratios measured side by side in the same run (interleaved repetitions, median
after warm-up), because the machines these run on are shared and noisy.

The in-process side of a comparison runs in the *service's own* environment
(:class:`InprocWorker`: the service virtualenv's Python with
``PYTHONPATH=protos/src:services/<name>/src``); TensorFlow and PyTorch are
never imported into the orchestrator's environment.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "results"

if str(REPO / "orchestrator" / "src") not in sys.path:  # running from a checkout without an installed package
    sys.path.insert(0, str(REPO / "orchestrator" / "src"))

from opsef_orchestrator.manager import ServiceManager  # noqa: E402

__all__ = [
    "REPO", "RESULTS", "STARTERS", "Bench", "InprocWorker", "base_parser", "machine_info", "starter_models",
    "markdown_table", "write_results", "merge_rows", "median", "nuclei_image", "vm_hwm", "reset_hwm", "proc_cpu_s",
    "self_peak_rss_mb", "fmt", "start", "require_starter_models", "load_rerender", "dsb_sweep_config",
]

logger = logging.getLogger("opsef.bench")

#: Prefix of the worker's reply lines (same constant as in ``bench/_worker.py``).
REPLY_PREFIX = "@@OPSEF-BENCH@@ "

#: The project's starter model of each family (used where its manifest exists).
STARTERS = {"stardist": "stardist_dsb2018_starter", "unet": "unet_dsb2018_starter", "cellpose": "cellpose_dsb2018_starter"}


# ---------------------------------------------------------------------------- arguments, machine, output
def base_parser(description: str) -> argparse.ArgumentParser:
    """Arguments every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions: keeps the script working (CI), judges nothing")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default bench/results, or bench/results/quick with --quick)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="CPU threads of every service and in-process worker (the same on both sides)")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="service state folder: services already running there are reused (default: a fresh temporary one)")
    p.add_argument("--keep-services", action="store_true", help="leave the services this benchmark started running")
    p.add_argument("--services", default="", help="comma-separated service families to include (default: every one with a starter model)")
    p.add_argument("--merge", action="store_true",
                   help="keep the previous results' rows of the services not measured now (boundary, native)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def starter_models(only: str = "") -> dict[str, str]:
    """family -> starter model name, for the starter models whose manifest exists (optionally filtered)."""
    wanted = {s.strip() for s in only.split(",") if s.strip()}
    out = {}
    for family, model in STARTERS.items():
        if wanted and family not in wanted:
            continue
        if (REPO / "services" / family / "models" / model / "manifest.yaml").is_file():
            out[family] = model
    return out


def start(p: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, float]:
    """Parse a benchmark's arguments and set up logging; returns the arguments and the start time (``perf_counter``)."""
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    return args, time.perf_counter()


def require_starter_models(only: str = "", message: str = "no starter model found") -> dict[str, str]:
    """:func:`starter_models`, exiting with ``message`` when there is none."""
    models = starter_models(only)
    if not models:
        sys.exit(message)
    return models


def load_rerender(args: argparse.Namespace) -> dict[str, Any]:
    """The saved results ``args.rerender`` (JSON); sets ``args.quick`` and ``args.threads`` to the saved ones."""
    saved = json.loads(args.rerender.read_text())
    args.quick, args.threads = saved["quick"], saved["threads"]
    return saved


def dsb_sweep_config(name: str, images: Sequence[Path], pipelines: list[dict[str, Any]], models: dict[str, str],
                     **extra: Any) -> dict[str, Any]:
    """A run configuration (as a dict) of ``images`` x ``pipelines`` x every model in ``models`` (family -> model)."""
    return {"name": name, "inputs": [{"path": str(p)} for p in images], "pipelines": pipelines,
            "models": [{"model": f"{f}:{m}"} for f, m in models.items()], **extra}


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _gpu() -> str:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return "none"
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        return out.stdout.strip().replace("\n", "; ") or "none"
    except (OSError, subprocess.SubprocessError):
        return "none"


def machine_info() -> dict[str, Any]:
    """CPU cores, CPU model, memory, GPU, load average: stated with every result."""
    mem = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) / 1024 / 1024
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count() or 0
    return {"cpu_cores": os.cpu_count(), "cpu_affinity": affinity, "cpu_model": _cpu_model(),
            "memory_gib": round(mem, 1), "gpu": _gpu(), "load_avg": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(), "python": sys.version.split()[0],
            "date": dt.datetime.now().isoformat(timespec="seconds")}


def fmt(v: Any, digits: int = 3) -> str:
    """Format a table cell: floats to ``digits`` significant-ish decimals, None as '-'."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of ``rows`` (dicts) with ``columns`` (default: keys of the first row)."""
    if not rows:
        return "(no rows)\n"
    cols = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_results(name: str, args: argparse.Namespace, payload: dict[str, Any], sections: Sequence[tuple[str, str]],
                  started: float, saved: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``<out>/<name>.json`` and ``<out>/<name>.md``; print the Markdown.

    ``sections`` are (heading, markdown body) pairs; the machine and the
    command line head the Markdown file. ``saved``: a previous result whose
    machine, command and wall time are kept (tables rebuilt with ``--rerender``).
    """
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    machine = saved["machine"] if saved else machine_info()
    command = saved["command"] if saved else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    wall = saved["wall_s"] if saved else round(time.perf_counter() - started, 1)
    doc = {"benchmark": name, "quick": bool(args.quick), "command": command, "threads": args.threads, "machine": machine,
           "wall_s": wall, **payload}
    jpath, mpath = out / f"{name}.json", out / f"{name}.md"
    tmp = jpath.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    os.replace(tmp, jpath)
    gpu = machine["gpu"]
    head = [f"# Benchmark: {name}{' (quick mode: not a measurement)' if args.quick else ''}", "",
            f"Machine: {machine['cpu_cores']} CPU cores ({machine['cpu_model']}), {machine['memory_gib']} GiB, "
            f"GPU: {gpu}; load average at the end {machine['load_avg']} (shared machine: compare ratios, not absolute times). "
            f"Threads per service/worker: {args.threads}. Date {machine['date']}; benchmark wall time {doc['wall_s']} s.", "",
            f"Command: `python bench/{doc['command']}`", ""]
    body = []
    for heading, text in sections:
        body += [f"## {heading}", "", text.rstrip(), ""]
    tmp = mpath.with_suffix(".md.tmp")
    tmp.write_text("\n".join(head + body))
    os.replace(tmp, mpath)
    print("\n".join(head + body))
    print(f"wrote {jpath} and {mpath}")
    return jpath, mpath


def merge_rows(args: argparse.Namespace, name: str, rows: list[dict[str, Any]], key: str = "service",
               field: str = "rows", measured: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """With ``--merge``: the rows of the previous ``<out>/<name>.json`` for the other services, then ``rows``.

    Lets a benchmark add a model family measured later without re-measuring the others (each row's ratios are
    measured side by side within that row's own run, so rows from different runs stay comparable as ratios).
    """
    if not getattr(args, "merge", False):
        return rows
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    old = out / f"{name}.json"
    if not old.is_file():
        return rows
    mine = set(measured) if measured is not None else {r[key] for r in rows}
    kept = [r for r in json.loads(old.read_text()).get(field, []) if r.get(key) not in mine]
    for r in kept:
        r.setdefault("merged_from", json.loads(old.read_text())["machine"]["date"])
    return kept + rows


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def median(values: Iterable[float]) -> float:
    vals = [float(v) for v in values]
    return statistics.median(vals) if vals else float("nan")


# ---------------------------------------------------------------------------- processes
def vm_hwm(pid: int) -> float:
    """Peak resident memory (VmHWM) of a live process in MiB, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def vm_rss(pid: int) -> float:
    """Current resident memory (VmRSS) in MiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_hwm(pid: int) -> bool:
    """Reset a process's peak RSS to its current RSS (``echo 5 > /proc/PID/clear_refs``); False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


def self_peak_rss_mb() -> float:
    """Peak RSS of this process in MiB (getrusage)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _vm_hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(cmd: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None,
                 log: Path | None = None, poll_s: float = 0.01) -> dict[str, Any]:
    """Run a command to completion; its wall time, CPU time and peak RSS.

    The peak RSS is the child's own ``VmHWM``, read every ``poll_s`` until it
    exits (a peak in its last ``poll_s`` can be missed): ``wait4``'s
    ``ru_maxrss`` is no use here, as Linux records the peak RSS of the memory
    that ``exec`` replaces, and a ``vfork``/``posix_spawn`` child (what
    ``subprocess`` uses) execs from the parent's memory, so it reported this
    benchmark process's own peak (generating a large test image) as the child's.
    """
    t0 = time.perf_counter()
    out = open(log, "w") if log else subprocess.DEVNULL
    hwm_kb = 0
    try:
        proc = subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            hwm_kb = max(hwm_kb, _vm_hwm_kb(proc.pid))
            time.sleep(poll_s)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if log:
            out.close()
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - t0, "cpu_s": ru.ru_utime + ru.ru_stime,
            "peak_rss_mb": hwm_kb / 1024}


# ---------------------------------------------------------------------------- services
class Bench:
    """Services for one benchmark: started with ``--threads`` in a state folder, stopped at the end.

    Services already running in ``--state-dir`` are reused (``run_all`` starts
    them once for all benchmarks).
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._tmp = None
        if args.state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="opsef-bench-state-")
            state = Path(self._tmp.name)
        else:
            state = args.state_dir
        self.manager = ServiceManager(state_dir=state, endpoints={})
        self.manager.explicit = {}
        self.started: list[str] = []
        self.work = Path(tempfile.mkdtemp(prefix="opsef-bench-work-"))

    def __enter__(self) -> "Bench":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def up(self, names: Sequence[str]) -> dict[str, str]:
        """Start (or reuse) the named services; returns name -> address."""
        todo = [n for n in names if not self.manager.running(n)]
        if todo:
            logger.info("starting services %s (threads %d)", todo, self.args.threads)
            self.manager.up(todo, timeout=600, extra_args=["--threads", str(self.args.threads), "--max-queue", "64"])
            self.started += todo
        return {n: self.manager.endpoint(n) for n in names}

    def pid(self, name: str) -> int:
        return self.manager._read()[name].pid

    def log_path(self, name: str) -> Path:
        return Path(self.manager._read()[name].log)

    def close(self) -> None:
        if self.started and not self.args.keep_services:
            self.manager.down(self.started)
        shutil.rmtree(self.work, ignore_errors=True)
        if self._tmp is not None and not self.args.keep_services:
            self._tmp.cleanup()


class InprocWorker:
    """A model adapter in the service's own environment, driven over a pipe (see ``bench/_worker.py``)."""

    def __init__(self, service: str, threads: int) -> None:
        from opsef_orchestrator.envs import ensure_env, env_python
        from opsef_orchestrator.paths import cache_dir

        sdir = REPO / "services" / service
        py = env_python(ensure_env(sdir))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "protos" / "src"), str(sdir / "src")]),
               "PYTHONUNBUFFERED": "1", "OPSEF_CACHE": str(cache_dir())}
        self.service = service
        self.proc = subprocess.Popen([str(py), str(BENCH / "_worker.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=sys.stderr if logger.isEnabledFor(logging.DEBUG) else subprocess.DEVNULL,
                                     text=True, env=env, cwd=sdir, start_new_session=True)  # like the services:
        # with autogroup scheduling each session is one scheduling group, so both sides compete alike
        self.info = self.call(op="init", service_dir=str(sdir), threads=threads)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd, default=_json_default) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(REPLY_PREFIX):
                reply = json.loads(line[len(REPLY_PREFIX):])
                if not reply.get("ok"):
                    raise RuntimeError(f"{self.service} worker: {reply.get('error')}\n{reply.get('traceback', '')}")
                return reply
        raise RuntimeError(f"{self.service} worker exited (code {self.proc.wait()}) during {cmd.get('op')}")

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.call(op="quit")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "InprocWorker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- synthetic data
def nuclei_image(shape: Sequence[int], cell: int = 24, radius: tuple[float, float] = (5.0, 9.0), fill: float = 0.8,
                 seed: int = 0, noise: float = 0.05, blur: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A large synthetic nuclei image (2D YX or 3D ZYX) and its uint32 ground truth, fast at any size.

    Nuclei are ellipses (ellipsoids) placed one per cell of a ``cell``-pixel
    grid with probability ``fill``, jittered inside their cell, so they never
    touch (at least 2 pixels apart) and the cost is linear in the pixel count.
    Image: uint16, bright nuclei on a dim background, blurred, with noise.
    """
    from scipy import ndimage

    shape = tuple(int(s) for s in shape)
    nd = len(shape)
    if nd not in (2, 3):
        raise ValueError(f"shape must be 2D or 3D, got {shape}")
    rmax = radius[1]
    if cell < 2 * rmax + 4:
        raise ValueError(f"cell ({cell}) must be at least 2*radius[1]+4 ({2 * rmax + 4:g})")
    rng = np.random.default_rng(seed)
    grid = tuple(s // cell for s in shape)
    labels = np.zeros(shape, np.uint32)
    n_cells = math.prod(grid)
    present = rng.random(n_cells) < fill
    radii = rng.uniform(radius[0], radius[1], size=(n_cells, nd))
    if nd == 3:
        radii[:, 0] = np.minimum(radii[:, 0], radius[1])
    angle = rng.uniform(0, np.pi, size=n_cells)
    margin = np.ceil(radii.max(axis=1)) + 2
    jitter = rng.uniform(-1, 1, size=(n_cells, nd)) * np.maximum(cell / 2 - margin, 0)[:, None]
    local = np.indices((cell,) * nd, dtype=np.float32) - (cell - 1) / 2
    ids = (np.cumsum(present) * present).astype(np.uint32)
    gx = grid[-1]
    # one row of cells (along the last axis) at a time, vectorised over the row
    for row, idx in enumerate(np.ndindex(*grid[:-1])):
        ks = np.arange(row * gx, (row + 1) * gx)
        if not present[ks].any():
            continue
        d = [local[i][None] - jitter[ks, i].reshape((-1,) + (1,) * nd) for i in range(nd)]
        c = np.cos(angle[ks]).reshape((-1,) + (1,) * nd)
        s = np.sin(angle[ks]).reshape((-1,) + (1,) * nd)
        r = [radii[ks, i].reshape((-1,) + (1,) * nd) for i in range(nd)]
        u = d[-1] * c + d[-2] * s
        v = -d[-1] * s + d[-2] * c
        q = (u / r[-1]) ** 2 + (v / r[-2]) ** 2
        if nd == 3:
            q = q + (d[0] / r[0]) ** 2
        block = np.where(q <= 1, ids[ks].reshape((-1,) + (1,) * nd), 0).astype(np.uint32)  # (gx, cell, ..., cell)
        block = np.moveaxis(block, 0, -2).reshape((cell,) * (nd - 1) + (gx * cell,))   # cells side by side
        box = tuple(slice(i * cell, (i + 1) * cell) for i in idx) + (slice(0, gx * cell),)
        labels[box] = block
    n = int(ids.max()) if n_cells else 0
    brightness = rng.uniform(0.5, 1.0, size=n + 1).astype(np.float32)
    brightness[0] = 0.05
    signal = brightness[labels]
    if blur > 0:
        signal = ndimage.gaussian_filter(signal, blur, output=signal)
    signal += rng.normal(0, noise, shape).astype(np.float32)
    image = np.clip(signal * 3000 + 200, 0, 65535).astype(np.uint16)
    return image, labels


def interleaved(n: int) -> Iterator[tuple[int, bool]]:
    """(repetition, a_first) pairs: the order of the two sides alternates every repetition."""
    for i in range(n):
        yield i, i % 2 == 0


@dataclasses.dataclass
class Timer:
    """Wall and CPU seconds of a block."""

    wall: float = 0.0
    cpu: float = 0.0

    @contextlib.contextmanager
    def measure(self) -> Iterator["Timer"]:
        c0, t0 = time.process_time(), time.perf_counter()
        try:
            yield self
        finally:
            self.wall = time.perf_counter() - t0
            self.cpu = time.process_time() - c0


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("opsef_orchestrator", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)
