"""Run every benchmark (one command), then summarise the targets in ``<out>/summary.md``.

The services are started once (in one state folder) and shared by the
benchmarks, then stopped. Without ``--quick`` the summary is also written into
``bench/README.md`` between its ``results`` markers.

Run: ``python bench/run_all.py [--quick] [--only boundary,native,...]``.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import BENCH, RESULTS, ServiceManager, base_parser, machine_info, markdown_table

BENCHMARKS = ["boundary", "native", "sweep", "wholeslide", "cache", "accuracy"]
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _load(out: Path, name: str) -> dict[str, Any] | None:
    f = out / f"{name}.json"
    return json.loads(f.read_text()) if f.is_file() else None


def summary_rows(out: Path) -> list[dict[str, Any]]:
    """One row per measured target, from the JSON results in ``out``."""
    rows: list[dict[str, Any]] = []
    b = _load(out, "boundary")
    if b:
        for r in b["rows"]:
            big = "2048" in r["case"]
            br = r.get("boundary_ratio", r["grpc_wall_s"] / r["server_predict_s"])
            rows.append({"benchmark": "1 boundary", "measure": f"{r['service']} {r['case']}: gRPC wall / service predict, same calls",
                         "value": br, "target": "<= 1.05 (2048x2048)" if big else "", "met": (br <= 1.05) if big else None})
            rows.append({"benchmark": "1 boundary", "measure": f"{r['service']} {r['case']}: gRPC / in-process, interleaved "
                         f"(noise: same code ran x{r['server_vs_inproc_predict']:.2f})", "value": r["ratio"], "target": "", "met": None})
    n = _load(out, "native")
    if n:
        for r in n["rows"]:
            rows.append({"benchmark": "2 native", "measure": f"{r['native']}: (opsef / own predict) / (native / own predict)",
                         "value": r.get("overhead_ratio"), "target": "<= 1.10", "met": r.get("overhead_ratio", 9) <= 1.10})
            rows.append({"benchmark": "2 native", "measure": f"opsef run / {r['native']} ({r['images']} images), interleaved",
                         "value": r["ratio"], "target": "<= 1.10", "met": r["ratio"] <= 1.10})
    s = _load(out, "sweep")
    if s:
        sm = s["summary"]
        rows.append({"benchmark": "3 sweep", "measure": f"orchestrator CPU / services CPU ({sm['jobs']} jobs)",
                     "value": sm["orchestrator_cpu_share"], "target": "<= 0.10", "met": sm["cpu_target_met"]})
        rows.append({"benchmark": "3 sweep", "measure": "sum of predict times / inference wall",
                     "value": sm["sum_predict_over_wall"], "target": "", "met": None})
        for r in s["services"]:
            if r.get("requests"):
                rows.append({"benchmark": "3 sweep", "measure": f"{r['service']}: idle with a request waiting (share of sweep)",
                             "value": r["idle_with_request_waiting_share"], "target": "~0", "met": r["idle_with_request_waiting_share"] < 0.02})
                rows.append({"benchmark": "3 sweep", "measure": f"{r['service']}: idle share (any reason)",
                             "value": r["idle_share"], "target": "", "met": None})
                if "starved_with_work_left_share" in r:
                    rows.append({"benchmark": "3 sweep",
                                 "measure": f"{r['service']}: starved while work for it was left (share until its last job)",
                                 "value": r["starved_with_work_left_share"], "target": "~0",
                                 "met": r["starved_with_work_left_share"] < 0.05})
    w = _load(out, "wholeslide")
    if w:
        for r in w["rows"]:
            if "wall_over_service_predict" in r:
                rows.append({"benchmark": "4 whole-slide", "measure": f"{r['case']}: inference wall / service predict",
                             "value": r["wall_over_service_predict"], "target": "", "met": None})
            rows.append({"benchmark": "4 whole-slide", "measure": f"{r['case']}: objects cut by tiling ({r['border_objects']} at borders)",
                         "value": float(r["cut_by_tiling"]), "target": "0", "met": r["cut_by_tiling"] == 0})
            if r.get("interior_split_rate"):  # a model that splits objects by itself: compare borders with interiors
                rows.append({"benchmark": "4 whole-slide",
                             "measure": f"{r['case']}: split rate of border objects / of interior objects (the model's own)",
                             "value": r["border_split_rate"] / r["interior_split_rate"], "target": "<= 1",
                             "met": r["border_split_rate"] <= r["interior_split_rate"]})
            rows.append({"benchmark": "4 whole-slide", "measure": f"{r['case']}: orchestrator peak RSS (MiB)",
                         "value": r["orchestrator_peak_rss_mb"], "target": "", "met": None})
        if w["growth"]:
            g, g0 = w["growth"][-1], w["growth"][0]["case"]
            t = g.get("time_per_pixel_x_machine_speed_corrected", g["time_per_pixel_x"])
            rows.append({"benchmark": "4 whole-slide", "measure": f"time per pixel, {g['case']} vs {g0} (machine speed corrected)",
                         "value": t, "target": "~1 (linear)", "met": t <= 1.2})
            rows.append({"benchmark": "4 whole-slide", "measure": f"service peak RSS, {g['case']} vs {g0}",
                         "value": g["service_rss_x"], "target": "~1 (flat)", "met": g["service_rss_x"] <= 1.2})
            rows.append({"benchmark": "4 whole-slide", "measure": f"orchestrator peak RSS, {g['case']} vs {g0}",
                         "value": g["orchestrator_rss_x"], "target": "~1 (flat)", "met": g["orchestrator_rss_x"] <= 1.2})
    c = _load(out, "cache")
    if c:
        sm = c["summary"]
        rows.append({"benchmark": "5 cache", "measure": f"rerun / first run, whole run ({sm['jobs']} jobs)",
                     "value": sm["ratio"], "target": "<= 0.05", "met": sm["met"]})
        rows.append({"benchmark": "5 cache", "measure": "rerun / first run, inference stage", "value": sm["ratio_inference"],
                     "target": "<= 0.05", "met": sm["met_inference"]})
    a = _load(out, "accuracy")
    if a:
        for r in a["rows"]:
            if r["images"] == "all":
                rows.append({"benchmark": "6 accuracy", "measure": f"{r['model'].split(':')[0]} / {r['pipeline']}: F1@0.5, AP@0.5, mAP",
                             "value": f"{r['f1@0.5']:.3f}, {r['ap@0.5']:.3f}, {r['mAP@0.5:0.95']:.3f}", "target": "", "met": None})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="comma-separated benchmarks (default all)")
    p.add_argument("--summary-only", action="store_true",
                   help="run nothing: rebuild summary.md (and the README table) from the JSON results in --out")
    args = p.parse_args(argv)
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    names = [] if args.summary_only else [n for n in BENCHMARKS if not args.only or n in args.only.split(",")]
    state = args.state_dir or (Path(tempfile.mkdtemp(prefix="opsef-bench-state-")) if names else None)
    failures = []
    try:
        for name in names:
            cmd = [sys.executable, str(BENCH / f"{name}.py"), "--out", str(out), "--state-dir", str(state), "--keep-services",
                   "--threads", str(args.threads)] + (["--quick"] if args.quick else []) + \
                  (["--services", args.services] if args.services else []) + (["-v"] if args.verbose else [])
            print(f"==== {name}: {' '.join(cmd)}", flush=True)
            rc = subprocess.call(cmd, cwd=BENCH)
            if rc != 0:
                failures.append(name)
    finally:
        if not args.keep_services and names:
            mgr = ServiceManager(state_dir=state, endpoints={})
            mgr.explicit = {}
            mgr.down()
            if args.state_dir is None:
                shutil.rmtree(state, ignore_errors=True)
    rows = summary_rows(out)
    m = machine_info()
    text = (f"Machine: {m['cpu_cores']} CPU cores ({m['cpu_model']}), {m['memory_gib']} GiB RAM, GPU: {m['gpu']}; "
            "shared with other developers' trainings and tests (load average 1 to 14 during the runs), so the figures are ratios "
            "measured side by side. "
            f"Threads per service/worker: {args.threads}. Summary written {m['date']}; each benchmark's own date, load "
            f"and wall time are in its bench/results/<name>.md.\n\n"
            + markdown_table(rows, ["benchmark", "measure", "value", "target", "met"]))
    (out / "summary.md").write_text(f"# Benchmark summary{' (quick mode)' if args.quick else ''}\n\n{text}")
    print(text)
    readme = BENCH / "README.md"
    if not args.quick and (not args.only or args.summary_only) and readme.is_file():
        doc = readme.read_text()
        if START in doc and END in doc:
            head, rest = doc.split(START, 1)
            _, tail = rest.split(END, 1)
            readme.write_text(f"{head}{START}\n{text}\n{END}{tail}")
    if failures:
        print(f"FAILED: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
