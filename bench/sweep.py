"""Benchmark 3: sweep efficiency (4 pipelines x every model family x 10 images).

One sweep through the run engine (in this process, against services started
with ``--threads``), then from the run record and the services' own logs:

* wall time of the inference stage vs the sum of the services' own predict
  times (``predict_s`` per job in ``record.json``);
* the orchestrator's own CPU time (this process: reading, preprocessing,
  encoding, decoding, writing, scheduling) vs the services' CPU time (from
  ``/proc/<pid>/stat``), target <= 10 %;
* per service, from the per-request log lines (end time, decode, queue,
  predict, encode): the share of the sweep it spent predicting, the time it sat
  idle although a request was already waiting in it (hand-over between two
  predictions: target ~0), and the time it had no request at all (starved:
  the orchestrator had nothing ready for it, e.g. still preprocessing).

Measurements, overlays and the report are switched off: this measures the
sweep engine, not the analysis after it.

Run: ``python bench/sweep.py [--quick]``.
"""
from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path
from typing import Any

from common import (Bench, base_parser, dsb_sweep_config, logger, markdown_table, proc_cpu_s, require_starter_models, start,
                    write_results)

TARGET_CPU_SHARE = 0.10
PIPELINES = [
    {"name": "none", "steps": []},
    {"name": "median3", "steps": [{"op": "median", "size": 3}]},
    {"name": "gauss1", "steps": [{"op": "gaussian", "sigma": 1.0}]},
    {"name": "clahe", "steps": [{"op": "clahe", "tile_grid": 8, "clip_limit": 0.01}]},
]
_LINE = re.compile(r"^(\S+ \S+) INFO opsef_protocol\.server: request (\S+) model (\S+) shape .*?: (\d+) objects, "
                   r"decode ([\d.]+) s, queue ([\d.]+) s, predict ([\d.]+) s, encode ([\d.]+) s")


def parse_service_log(path: Path, offset: int) -> list[dict[str, float]]:
    """Per-request intervals (epoch seconds) from a service log, reading from byte ``offset``."""
    out = []
    with open(path, "rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        end = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        dec, queue, pred, enc = (float(m.group(i)) for i in (5, 6, 7, 8))
        pred_end = end - enc
        pred_start = pred_end - pred
        out.append({"id": m.group(2), "arrival": pred_start - queue - dec, "pred_start": pred_start, "pred_end": pred_end,
                    "end": end, "predict": pred})
    return sorted(out, key=lambda r: r["pred_start"])


def service_idle(reqs: list[dict[str, float]], t0: float, t1: float) -> dict[str, Any]:
    """Predicting / idle-with-work-waiting / starved seconds of one service over the window [t0, t1]."""
    if not reqs:
        return {"requests": 0}
    window = t1 - t0
    predict = sum(r["predict"] for r in reqs)
    waiting_idle = starved = 0.0
    starved += max(0.0, reqs[0]["pred_start"] - t0)
    for a, b in zip(reqs, reqs[1:]):
        gap = max(0.0, b["pred_start"] - a["pred_end"])
        if b["arrival"] <= a["pred_end"]:
            waiting_idle += gap  # b was already in the service: hand-over time
        else:
            waiting_idle += max(0.0, b["pred_start"] - b["arrival"])  # b's own decode + queue
            starved += max(0.0, b["arrival"] - a["pred_end"])
    tail = max(0.0, t1 - reqs[-1]["pred_end"])  # after its last job: the sweep had no more work for it
    starved += tail
    done_after = reqs[-1]["pred_end"] - t0
    return {"requests": len(reqs), "window_s": window, "predict_s": predict, "busy_share": predict / window,
            "idle_share": 1 - predict / window, "idle_with_request_waiting_s": waiting_idle,
            "idle_with_request_waiting_share": waiting_idle / window, "starved_s": starved, "starved_share": starved / window,
            "first_start_s": reqs[0]["pred_start"] - t0, "tail_after_last_s": t1 - reqs[-1]["pred_end"],
            # starved while the sweep still had work for it: head-of-line blocking behind a slower service
            "done_after_s": done_after, "starved_with_work_left_s": starved - tail,
            "starved_with_work_left_share": (starved - tail) / max(done_after, 1e-9)}


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=None, help="images (default 10, quick 2)")
    args, started = start(p, argv)
    from native import dsb_images
    from opsef_orchestrator.config import RunConfig
    from opsef_orchestrator.engine import run

    models = require_starter_models(args.services)
    images = dsb_images(args.images or (2 if args.quick else 10))
    pipelines = PIPELINES[:2] if args.quick else PIPELINES
    with Bench(args) as bench:
        eps = bench.up(list(models))
        cfg = RunConfig.model_validate(dsb_sweep_config(
            "sweep", images, pipelines, models,
            outputs={"root": str(bench.work / "runs"), "preprocessed": False, "overlays": False, "tables": False,
                     "report": False},
            postprocess={"measure": False}, endpoints=eps,
        ))
        from opsef_orchestrator import postrun  # noqa: F401 - imported before timing (the engine imports it first)
        from opsef_orchestrator.client import SegmenterClient
        from opsef_orchestrator.io import read_image

        warm = read_image(images[0])
        for f, m in models.items():  # warm services: models loaded before the sweep
            with SegmenterClient(eps[f], timeout=3600, attempts=1) as client:
                client.segment(warm.data[..., :3].copy() if warm.axes.endswith("C") else warm.data, warm.axes, m, {})
        pids = {f: bench.pid(f) for f in models}
        logs = {f: bench.log_path(f) for f in models}
        offsets = {f: logs[f].stat().st_size for f in models}
        cpu_services0 = {f: proc_cpu_s(pid) for f, pid in pids.items()}
        c0, t0_epoch, t0 = time.process_time(), time.time(), time.perf_counter()
        result = run(cfg, manager=bench.manager)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        t1_epoch = time.time()
        cpu_services = {f: proc_cpu_s(pid) - cpu_services0[f] for f, pid in pids.items()}
        rec = result.record
        if result.failed:
            logger.warning("%d jobs failed: %s", len(result.failed), result.failed[:3])
        per_service = []
        t_start = t0_epoch + max(0.0, wall - rec["stages"]["total_s"])  # the engine's own start
        infer_end = t_start + rec["stages"]["inference_wall_s"]
        for f in models:
            reqs = parse_service_log(logs[f], offsets[f])
            jobs = [j for j in rec["jobs"] if j["model"].startswith(f + ":") and j["status"] == "ok"]
            row = {"service": f, "jobs": len(jobs), "job_predict_s": sum(j["predict_s"] for j in jobs),
                   "cpu_s": cpu_services[f], **service_idle(reqs, t_start, infer_end)}
            per_service.append(row)
    predict_sum = sum(r["job_predict_s"] for r in per_service)
    services_cpu = sum(cpu_services.values())
    summary = {
        "images": len(images), "pipelines": len(pipelines), "models": len(models), "jobs": rec["plan"]["jobs"],
        "failed": len(result.failed), "wall_s": wall, "inference_wall_s": rec["stages"]["inference_wall_s"],
        "sum_predict_s": predict_sum, "sum_predict_over_wall": predict_sum / rec["stages"]["inference_wall_s"],
        "orchestrator_cpu_s": cpu, "services_cpu_s": services_cpu, "orchestrator_cpu_share": cpu / services_cpu,
        "target_cpu_share": TARGET_CPU_SHARE, "cpu_target_met": cpu / services_cpu <= TARGET_CPU_SHARE,
        "read_preprocess_s": rec["stages"]["read_preprocess_s"], "cpu_cores": bench_cores(),
    }
    text1 = markdown_table([summary], ["images", "pipelines", "models", "jobs", "failed", "inference_wall_s", "sum_predict_s",
                                       "sum_predict_over_wall", "orchestrator_cpu_s", "services_cpu_s", "orchestrator_cpu_share",
                                       "cpu_target_met"])
    text1 += ("\nsum_predict_over_wall > 1 means services predicted in parallel; on a machine with fewer cores than "
              "services they compete for the same cores, so each prediction is slower than alone.\n")
    text2 = markdown_table(per_service, ["service", "jobs", "window_s", "predict_s", "busy_share", "idle_share",
                                         "idle_with_request_waiting_s", "idle_with_request_waiting_share", "starved_s",
                                         "starved_share", "done_after_s", "starved_with_work_left_s",
                                         "starved_with_work_left_share", "cpu_s"])
    text2 += ("\nidle_with_request_waiting = time the service did not predict although a request was already inside it "
              "(decode and hand-over between two predictions; target ~0); starved = time with no request in the "
              "service (the orchestrator had nothing ready for it, or the sweep had not reached it yet / was done "
              "with it); starved_with_work_left = starved before the service's last job ended, over the time until "
              "then (a fast service waiting behind a slow one: target ~0).\n")
    write_results("sweep", args, {"summary": summary, "services": per_service, "record_stages": rec["stages"]},
                  [("Sweep", text1), ("Per service", text2)], started)
    return 0


def bench_cores() -> int:
    import os

    return os.cpu_count() or 1


if __name__ == "__main__":
    raise SystemExit(main())
