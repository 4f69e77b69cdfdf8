"""Load test of the model services: N concurrent clients x M requests each, with retries; latency and memory.

Run as a benchmark (prints a table)::

    .venv/bin/python -m tests.reliability.load [--services stardist,unet,cellpose] [--clients 8] [--requests 50]

Each service is started with a small prediction queue (``--max-concurrent 1
--max-queue 4``) so that most concurrent requests are first refused with
RESOURCE_EXHAUSTED and succeed on retry. The figures are p50/p95 latency per
request (retries included), requests refused at least once, failures after
retries, and the service's resident memory (``/proc/PID/status``) before, at
its peak during the load, and after. The test suite
(``tests/reliability/test_load.py``) asserts only correctness: zero failures,
bounded memory growth.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import logging
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from opsef_orchestrator.client import SegmentError, SegmenterClient

__all__ = ["LoadResult", "rss_mib", "run_load", "main"]

#: Extra serve arguments of the services under load: one prediction at a time, four waiting (8 clients overflow it).
LIMITED_ARGS = ("--max-concurrent", "1", "--max-queue", "4")
#: Client retry settings of the load: refusals are retried with jittered exponential backoff (0.05 s to 2 s) for
#: about a minute. Retry-based admission is not fair: under overload that outlasts a client's retry budget a
#: request can still fail, so the budget must exceed the overload (or the queue be sized to the clients).
CLIENT_RETRY = {"attempts": 40, "backoff": 0.05, "max_backoff": 2.0}


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process in MiB from ``/proc/PID/status`` (``VmRSS``, or ``VmHWM`` for its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise ValueError(f"no {field} in /proc/{pid}/status")


@dataclasses.dataclass
class LoadResult:
    service: str
    requests: int
    failures: list[str]
    refused: int
    latencies_s: list[float]
    rss_before_mib: float
    rss_peak_mib: float
    rss_after_mib: float
    wall_s: float

    @property
    def p50(self) -> float:
        return float(np.percentile(self.latencies_s, 50)) if self.latencies_s else float("nan")

    @property
    def p95(self) -> float:
        return float(np.percentile(self.latencies_s, 95)) if self.latencies_s else float("nan")

    def row(self) -> str:
        return (f"{self.service:<10} {self.requests:>8} {len(self.failures):>8} {self.refused:>8} {self.p50:>8.3f} "
                f"{self.p95:>8.3f} {self.requests / self.wall_s:>8.1f} {self.rss_before_mib:>9.0f} "
                f"{self.rss_peak_mib:>9.0f} {self.rss_after_mib:>9.0f}")


HEADER = (f"{'service':<10} {'requests':>8} {'failed':>8} {'refused':>8} {'p50 s':>8} {'p95 s':>8} {'req/s':>8} "
          f"{'RSS0 MiB':>9} {'peak MiB':>9} {'RSS1 MiB':>9}")


def _refusals(log: Path | None) -> int:
    if log is None or not log.is_file():
        return 0
    return sum("RESOURCE_EXHAUSTED" in line for line in log.read_text(errors="replace").splitlines())


def run_load(service: str, target: str, model: str, pid: int, *, log: Path | None = None, clients: int = 8,
             requests: int = 50, image: np.ndarray | None = None, axes: str = "YX", **client_kw) -> LoadResult:
    """``clients`` threads, each with its own channel, send ``requests`` Segment calls; returns the figures.

    Memory is sampled every 50 ms during the load; ``rss_before`` is taken after one warm-up request.
    ``refused`` counts the RESOURCE_EXHAUSTED answers in the service's ``log`` (each was retried).
    """
    if image is None:
        rng = np.random.default_rng(0)
        image = (rng.random((64, 64)) * 255).astype(np.uint8)
    opts = {**CLIENT_RETRY, "timeout": 300.0, **client_kw}
    with SegmenterClient(target, **opts) as warm:
        warm.segment(image, axes, model)
    before = rss_mib(pid)
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], rss_mib(pid))
            except (OSError, ValueError):
                return
            time.sleep(0.05)

    latencies: list[float] = []
    failures: list[str] = []
    refused0 = _refusals(log)
    lock = threading.Lock()

    def one_client(k: int) -> None:
        with SegmenterClient(target, **opts) as c:
            for i in range(requests):
                t0 = time.perf_counter()
                try:
                    c.segment(image, axes, model, request_id=f"load-{k}-{i}")
                except SegmentError as exc:
                    with lock:
                        failures.append(f"client {k} request {i}: {exc.code.name}: {exc.details}")
                    continue
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as ex:
        list(ex.map(one_client, range(clients)))
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    return LoadResult(service, clients * requests, failures, _refusals(log) - refused0, latencies, before, peak[0],
                      rss_mib(pid), wall)


def main(argv: list[str] | None = None) -> int:
    from opsef_orchestrator.manager import ServiceManager

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", default="stardist,unet,cellpose")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=50)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the clients' retry warnings would drown the table
    from tests.reliability._support import STARTERS, service_skip_reason

    mgr = ServiceManager(state_dir=Path(tempfile.mkdtemp(prefix="opsef-load-")), endpoints={})
    mgr.explicit = {}
    rows = []
    try:
        for name in args.services.split(","):
            reason = service_skip_reason(name)
            if reason:
                print(f"skipping {reason}")
                continue
            target = mgr.up([name], extra_args=list(LIMITED_ARGS))[name]
            rec = mgr._read()[name]
            rows.append(run_load(name, target, STARTERS[name], rec.pid, log=Path(rec.log), clients=args.clients,
                                 requests=args.requests))
            mgr.down([name])
    finally:
        mgr.down()
    print(f"{args.clients} clients x {args.requests} requests of a 64x64 uint8 image per service; "
          f"services run with {' '.join(LIMITED_ARGS)}")
    print(HEADER)
    for r in rows:
        print(r.row())
        for f in r.failures[:5]:
            print("   ", f)
    return 1 if any(r.failures for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
