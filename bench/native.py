"""Benchmark 2: OpSeF against native use of each tool.

The same images through (a) StarDist's own ``predict_instances`` loop and (b)
Cellpose's own ``model.eval`` loop (both in the service's environment: read,
grey, normalise, predict, write the labels as TIFF; model loaded and warmed up
before timing), and (c) ``opsef-orchestrate run`` with that one model (the CLI
in a subprocess against the already running, warmed-up service; no
measurements, overlays or report). Rounds are interleaved (the order
alternates), medians reported.

The OpSeF time is the run's own ``total_s`` (from its record: planning, service
queries, hashing, reading, preprocessing, segmentation, writing labels and the
record); the CLI process wall time, which adds Python start-up and imports, is
reported beside it.

Run: ``python bench/native.py [--quick]``. Target: opsef / native <= 1.10.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from common import REPO, Bench, InprocWorker, merge_rows, base_parser, logger, markdown_table, median, run_measured, setup_logging, starter_models, write_results

TARGET = 1.10
NATIVE = {"stardist": "StarDist2D.predict_instances loop", "cellpose": "CellposeModel.eval loop"}


def dsb_images(n: int | None) -> list[Path]:
    """DSB2018 val images (sorted), or synthetic ones written to a temporary folder when the data is absent."""
    from opsef_orchestrator.paths import shared_data_dir

    d = shared_data_dir()
    if d is not None and (d / "dsb2018" / "val" / "images").is_dir():
        imgs = sorted((d / "dsb2018" / "val" / "images").glob("*.png"))
        return imgs[:n] if n else imgs
    raise SystemExit("../shared/data/dsb2018 is needed (set OPSEF_SHARED_DATA)")


def opsef_config(path: Path, images: list[Path], model: str, root: Path, **extra: Any) -> Path:
    """A run configuration segmenting ``images`` with one model, without the analysis extras."""
    cfg = {
        "name": "bench",
        "inputs": [{"path": str(p)} for p in images],
        "models": [{"model": model}],
        "outputs": {"root": str(root), "preprocessed": False, "overlays": False, "tables": False, "report": False},
        "postprocess": {"measure": False},
        **extra,
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _objects(folder: Path) -> int:
    import tifffile

    return int(sum(len(np.unique(tifffile.imread(f))) - 1 for f in sorted(folder.glob("*.tif"))))


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 1)")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    started = time.perf_counter()
    from opsef_orchestrator.client import SegmenterClient
    from opsef_orchestrator.io import read_image

    models = {f: m for f, m in starter_models(args.services).items() if f in NATIVE}
    if not models:
        sys.exit("no StarDist or Cellpose starter model found")
    images = dsb_images(2 if args.quick else None)
    rounds = args.rounds or (1 if args.quick else 3)
    rows: list[dict[str, Any]] = []
    cli = str(REPO / ".venv" / "bin" / "opsef-orchestrate") if (REPO / ".venv" / "bin" / "opsef-orchestrate").is_file() else None
    with Bench(args) as bench:
        for family, model in models.items():
            addr = bench.up([family])[family]
            ref = f"{family}:{model}"
            with SegmenterClient(addr, timeout=3600, attempts=1) as client:  # warm the service: load the model
                img = read_image(images[0])
                client.segment(np.ascontiguousarray(img.data[..., :3]), img.axes, model, {})
            env = {**os.environ, "OPSEF_ENDPOINTS": f"{family}={addr}", "OPSEF_STATE_DIR": str(bench.manager.state_dir)}
            cmd_base = [cli] if cli else [sys.executable, "-m", "opsef_orchestrator.cli"]
            native_s, native_cpu, opsef_total, opsef_infer, cli_wall, cli_rss = [], [], [], [], [], []
            native_pred, opsef_pred = [], []
            objects: dict[str, int] = {}
            with InprocWorker(family, args.threads) as worker:
                warm = worker.call(op="native_loop", model=model, images=[str(images[0])], out_dir=str(bench.work / "warm"))
                logger.info("%s: native warm-up %.2f s", family, warm["seconds"])
                for r in range(rounds):
                    def native() -> None:
                        out = bench.work / f"{family}-native-{r}"
                        res = worker.call(op="native_loop", model=model, images=[str(x) for x in images], out_dir=str(out))
                        native_s.append(res["seconds"])
                        native_cpu.append(res["cpu_s"])
                        native_pred.append(res["predict_s"])
                        objects["native"] = _objects(out)

                    def opsef() -> None:
                        root = bench.work / f"{family}-opsef-{r}"
                        cfg = opsef_config(bench.work / f"{family}-{r}.yaml", images, ref, root)
                        m = run_measured(cmd_base + ["run", str(cfg)], env=env, log=bench.work / f"{family}-opsef-{r}.log")
                        if m["rc"] != 0:
                            raise RuntimeError(f"opsef-orchestrate run failed: {(bench.work / f'{family}-opsef-{r}.log').read_text()[-2000:]}")
                        run_dir = next(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
                        rec = json.loads((run_dir / "record.json").read_text())
                        opsef_total.append(rec["stages"]["total_s"])
                        opsef_infer.append(rec["stages"]["inference_wall_s"])
                        opsef_pred.append(sum(j.get("predict_s", 0.0) for j in rec["jobs"]))
                        cli_wall.append(m["wall_s"])
                        cli_rss.append(m["peak_rss_mb"])
                        objects["opsef"] = _objects(run_dir / "labels" / next(iter(os.listdir(run_dir / "labels"))))

                    for side in ((native, opsef) if r % 2 == 0 else (opsef, native)):
                        side()
                    logger.info("%s round %d: native %.2f s, opsef %.2f s", family, r, native_s[-1], opsef_total[-1])
            nat = median(native_s)
            rows.append({
                "service": family, "model": model, "native": NATIVE[family], "images": len(images), "rounds": rounds,
                "native_s": nat, "opsef_run_s": median(opsef_total), "ratio": median(opsef_total) / nat,
                "opsef_inference_s": median(opsef_infer), "ratio_inference": median(opsef_infer) / nat,
                "cli_process_s": median(cli_wall), "ratio_cli_process": median(cli_wall) / nat,
                "native_cpu_s": median(native_cpu), "cli_peak_rss_mb": max(cli_rss),
                # each side's wall over its own predict time, within the same run: free of the noise between runs
                "native_over_own_predict": median(n / p for n, p in zip(native_s, native_pred)),
                "opsef_over_own_predict": median(o / p for o, p in zip(opsef_total, opsef_pred)),
                "objects_native": objects.get("native"), "objects_opsef": objects.get("opsef"),
                "native_all_s": native_s, "opsef_all_s": opsef_total, "cli_all_s": cli_wall,
            })
    rows = merge_rows(args, "native", rows, measured=models)
    for r in rows:
        r["overhead_ratio"] = r["opsef_over_own_predict"] / r["native_over_own_predict"]
    cols = ["service", "native", "images", "rounds", "native_s", "opsef_run_s", "ratio", "overhead_ratio", "ratio_inference",
            "cli_process_s", "ratio_cli_process", "objects_native", "objects_opsef"]
    verdicts = [{"service": r["service"], "ratio": r["ratio"], "overhead_ratio": r["overhead_ratio"], "target": TARGET,
                 "met": r["ratio"] <= TARGET, "met_overhead_ratio": r["overhead_ratio"] <= TARGET,
                 "miss_by": None if r["ratio"] <= TARGET else r["ratio"] - TARGET} for r in rows]
    text = markdown_table(rows, cols) + (
        "\nratio = OpSeF run total_s (record) / native loop, interleaved rounds; overhead_ratio = (OpSeF run / the "
        "service's predict time in that run) / (native loop / its predict time in that run): each side's cost beyond "
        "prediction, measured within one run, so the noise between runs cancels; ratio_inference uses the run's inference stage; "
        "ratio_cli_process uses the whole CLI process (adds Python start-up and imports, which the native loop, "
        "timed inside a warm process, does not pay).\n")
    write_results("native", args, {"target": TARGET, "images": [str(i) for i in images], "rows": rows, "verdicts": verdicts},
                  [("OpSeF run vs the tool's own loop", text), ("Target: opsef/native <= 1.10", markdown_table(verdicts))],
                  started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
