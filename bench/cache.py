"""Benchmark 5: re-running a finished sweep (content cache).

A sweep (DSB2018 val images x 2 pipelines x every starter model, with ground
truth, measurements, overlays and the report, as a user would run it) is run
twice with the same configuration and output root, through the run engine in
this process against warm services. The second run finds every job in the
content cache and does no inference; the analysis after inference (evaluation
scores, measurement tables, overlays, montages, plots) comes from the same
cache, and only the new run folder's tables, overlay stack and report are
written again.

Run: ``python bench/cache.py [--quick]``. Target: second run <= 5 % of the
first run's wall time.
"""
from __future__ import annotations

import time
from typing import Any

from common import Bench, base_parser, dsb_sweep_config, logger, markdown_table, require_starter_models, start, write_results

TARGET = 0.05


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=None, help="images (default 5, quick 2)")
    args, started = start(p, argv)
    from native import dsb_images
    from opsef_orchestrator import postrun  # noqa: F401 - imported before timing
    from opsef_orchestrator.client import SegmenterClient
    from opsef_orchestrator.config import RunConfig
    from opsef_orchestrator.engine import run
    from opsef_orchestrator.io import read_image
    from opsef_orchestrator.paths import shared_data_dir

    models = require_starter_models(args.services)
    images = dsb_images(args.images or (2 if args.quick else 5))
    pipelines = [{"name": "none", "steps": []}] + ([] if args.quick else [{"name": "median3", "steps": [{"op": "median", "size": 3}]}])
    runs: list[dict[str, Any]] = []
    with Bench(args) as bench:
        eps = bench.up(list(models))
        warm = read_image(images[0])
        for f, m in models.items():
            with SegmenterClient(eps[f], timeout=3600, attempts=1) as client:
                client.segment(warm.data[..., :3].copy(), warm.axes, m, {})
        cfg = RunConfig.model_validate(dsb_sweep_config(
            "cache", images, pipelines, models,
            ground_truth={"path": str(shared_data_dir() / "dsb2018" / "val" / "masks"), "pattern": "{stem}.tif"},
            outputs={"root": str(bench.work / "runs")}, endpoints=eps,
        ))
        for label in ("first", "rerun"):
            t0 = time.perf_counter()
            res = run(cfg, manager=bench.manager)
            wall = time.perf_counter() - t0
            st = res.record["stages"]
            runs.append({"run": label, "wall_s": wall, "inference_wall_s": st["inference_wall_s"],
                         "postprocess_s": st["postprocess_s"], "computed": res.record["counts"]["ok"],
                         "cached": res.record["counts"]["cached"], "failed": res.record["counts"]["failed"],
                         "analysis_hits": sum(res.record["cache"]["hits"].values()),
                         "analysis_misses": sum(res.record["cache"]["misses"].values())})
            logger.info("%s: %.2f s (%s)", label, wall, res.record["counts"])
    first, again = runs
    summary = {"jobs": first["computed"] + first["cached"] + first["failed"], "first_wall_s": first["wall_s"],
               "rerun_wall_s": again["wall_s"], "ratio": again["wall_s"] / first["wall_s"],
               "ratio_inference": again["inference_wall_s"] / first["inference_wall_s"],
               "rerun_postprocess_share": again["postprocess_s"] / again["wall_s"], "target": TARGET,
               "met": again["wall_s"] / first["wall_s"] <= TARGET,
               "met_inference": again["inference_wall_s"] / first["inference_wall_s"] <= TARGET}
    text = markdown_table(runs) + "\n" + markdown_table([summary]) + (
        "\nratio = rerun wall / first wall (whole run: labels and analysis results from the cache, the new run "
        "folder's tables, overlay stack and report written again); ratio_inference = the inference stages only; "
        "analysis_hits/misses = content-cache lookups of preprocessed images and analysis results.\n")
    write_results("cache", args, {"images": len(images), "pipelines": len(pipelines), "models": list(models),
                                  "runs": runs, "summary": summary},
                  [("Re-running a finished sweep", text)], started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
