"""Benchmark 4: whole-slide scale through StarDist, tiled by the orchestrator.

Synthetic nuclei images with known labels (:func:`common.nuclei_image`) of
2048^2, 4096^2 and 8192^2 pixels (quick: 512^2 and 1024^2) are segmented by
``opsef-orchestrate run`` (a subprocess; input memory-mapped, tiles of
``--tile`` pixels with ``--overlap``) through the StarDist starter model. Per
size: throughput (Mpixel/s of the inference stage) against the single-tile
throughput (one ``Segment`` call of a tile-sized image, median of 3), peak RSS
of the orchestrator process (``wait4``) and of the service (``VmHWM``, reset
before each size), and agreement with the ground truth, split into objects
that cross a tile-core border and the others:

* recall at IoU 0.5 of border and interior objects;
* border objects split by tiling: two predicted objects, each mostly inside
  the same ground-truth object, that touch each other across a tile-core
  border line (a straight cut): target 0;
* split / duplicated objects (>= 2 predicted objects mostly inside one
  ground-truth object) at borders vs inside (the model's own rate).

A 3D volume (64x1024x1024) needs a StarDist 3D model with weights; without
one (the published ``3D_demo`` is not cached offline) it is reported as not
measured.

Run: ``python bench/wholeslide.py [--quick]``.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import (REPO, Bench, base_parser, logger, markdown_table, median, nuclei_image, reset_hwm, run_measured,
                    setup_logging, starter_models, vm_hwm, write_results)


def _mostly_inside(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """For each predicted id, the ground-truth id holding more than half of its pixels (0 if none)."""
    fg = (gt > 0) & (pred > 0)
    g, p = gt[fg].astype(np.int64), pred[fg].astype(np.int64)
    n_pred = int(pred.max()) + 1
    key = p * (int(gt.max()) + 1) + g
    pairs, counts = np.unique(key, return_counts=True)
    pp, gg = pairs // (int(gt.max()) + 1), pairs % (int(gt.max()) + 1)
    area = np.bincount(pred.ravel(), minlength=n_pred)
    owner = np.zeros(n_pred, np.int64)
    major = counts * 2 > area[pp]
    owner[pp[major]] = gg[major]
    return owner


def border_agreement(gt: np.ndarray, pred: np.ndarray, tiles: list[Any]) -> dict[str, Any]:
    """Agreement with ground truth at tile-core borders vs elsewhere (see the module notes)."""
    from scipy import ndimage

    from opsef_orchestrator.evaluation import match_labels, match_pairs

    nd = gt.ndim
    lines = [sorted({t.core[a].start for t in tiles if t.core[a].start > 0}) for a in range(nd)]
    slices = ndimage.find_objects(gt)
    border = np.zeros(len(slices) + 1, bool)
    for i, sl in enumerate(slices, start=1):
        if sl is not None and any(any(s.start < b < s.stop for b in lines[a]) for a, s in enumerate(sl)):
            border[i] = True
    matched_gt, _, _ = match_pairs(gt, pred, 0.5)
    is_matched = np.zeros(len(border), bool)
    is_matched[matched_gt] = True
    owner = _mostly_inside(gt, pred)
    per_gt = np.bincount(owner[owner > 0], minlength=len(border))
    split = per_gt >= 2
    cut = set()
    for a in range(nd):
        for b in lines[a]:
            lo = np.take(pred, b - 1, axis=a).ravel()
            hi = np.take(pred, b, axis=a).ravel()
            m = (lo > 0) & (hi > 0) & (lo != hi)
            for x, y in set(zip(lo[m].tolist(), hi[m].tolist())):
                if owner[x] > 0 and owner[x] == owner[y]:
                    cut.add((min(x, y), max(x, y)))
    ids = np.arange(len(border))
    b_ids, i_ids = ids[border], ids[(~border) & (ids > 0)]
    overall = match_labels(gt, pred, 0.5)
    return {
        "n_true": overall.n_true, "n_pred": overall.n_pred, "precision": overall.precision, "recall": overall.recall,
        "f1": overall.f1, "ap@0.5": overall.ap,
        "border_objects": int(b_ids.size), "border_recall": float(is_matched[b_ids].mean()) if b_ids.size else float("nan"),
        "interior_recall": float(is_matched[i_ids].mean()) if i_ids.size else float("nan"),
        "cut_by_tiling": len(cut),
        "border_split_or_duplicated": int(split[b_ids].sum()), "interior_split_or_duplicated": int(split[i_ids].sum()),
        "border_split_rate": float(split[b_ids].mean()) if b_ids.size else float("nan"),
        "interior_split_rate": float(split[i_ids].mean()) if i_ids.size else float("nan"),
    }


def derive(row: dict[str, Any], tile: int, overlap: int) -> dict[str, Any]:
    """Figures that divide out the machine's speed at the time of the run (robust on a shared machine).

    ``tile_megapixels``: pixels actually sent (tiles overlap); ``service_s_per_tile_mpx``: the service's own
    predict time per sent pixel during this run; ``wall_over_service_predict``: inference wall / the service's
    predict time (1 = the service never waited for the orchestrator); ``vs_service_speed``: tiled throughput over
    the service's own throughput in the same run.
    """
    from opsef_orchestrator.tiling import tile_grid

    spatial = tuple(row["shape"])
    if max(spatial[-2:]) > tile:
        ts = (spatial[0],) * (len(spatial) - 2) + (min(tile, spatial[-2]), min(tile, spatial[-1]))
        ov = (0,) * (len(spatial) - 2) + (min(overlap, tile // 4),) * 2
        tile_px = sum(float(np.prod(t.shape)) for t in tile_grid(spatial, ts, ov))
    else:
        tile_px = float(np.prod(spatial))
    pred = row.get("service_predict_s") or float("nan")
    row["tile_megapixels"] = tile_px / 1e6
    row["service_s_per_tile_mpx"] = pred / (tile_px / 1e6)
    row["wall_over_service_predict"] = row["inference_wall_s"] / pred
    row["vs_service_speed"] = row["mpx_per_s"] / ((tile_px / 1e6) / pred)
    row["ideal_vs_service_speed"] = row["megapixels"] / (tile_px / 1e6)  # image pixels / sent pixels
    return row


def single_tile_throughput(client: Any, model: str, tile: int) -> dict[str, float]:
    img, _ = nuclei_image((tile, tile), seed=99)
    client.segment(img, "YX", model, {})  # warm-up
    walls = []
    for _ in range(3):
        t0 = time.perf_counter()
        client.segment(img, "YX", model, {})
        walls.append(time.perf_counter() - t0)
    w = median(walls)
    return {"tile": tile, "seconds": w, "mpx_per_s": tile * tile / 1e6 / w}


def run_size(bench: Bench, family: str, model: str, addr: str, shape: tuple[int, ...], tile: int, overlap: int,
             z_tile: int = 0) -> dict[str, Any]:
    import tifffile
    import yaml

    from opsef_orchestrator.io import read_image
    from opsef_orchestrator.tiling import tile_grid

    name = "x".join(map(str, shape))
    t0 = time.perf_counter()
    img, gt = nuclei_image(shape, seed=len(shape) * 7 + shape[-1]) if len(shape) == 2 else \
        nuclei_image(shape, cell=20, radius=(4.0, 7.0), seed=5)
    gen_s = time.perf_counter() - t0
    path = bench.work / f"slide_{name}.tif"
    tifffile.imwrite(path, img, metadata={"axes": "YX" if len(shape) == 2 else "ZYX"})
    del img
    gt_path = bench.work / f"gt_{name}.npy"
    np.save(gt_path, gt)
    del gt
    root = bench.work / f"runs_{name}"
    cfg = {"name": "slide", "inputs": [{"path": str(path), "read": {"memmap": True}}], "models": [{"model": f"{family}:{model}"}],
           "tiling": {"tile_size": tile, "overlap": overlap, "z_tile_size": z_tile},
           "outputs": {"root": str(root), "preprocessed": False, "overlays": False, "tables": False, "report": False},
           "postprocess": {"measure": False}}
    cfg_path = bench.work / f"slide_{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    pid = bench.pid(family)
    reset_ok = reset_hwm(pid)
    hwm_before = vm_hwm(pid)
    cli = REPO / ".venv" / "bin" / "opsef-orchestrate"
    cmd = [str(cli)] if cli.is_file() else [sys.executable, "-m", "opsef_orchestrator.cli"]
    env = {**os.environ, "OPSEF_ENDPOINTS": f"{family}={addr}"}
    log = bench.work / f"slide_{name}.log"
    m = run_measured(cmd + ["run", str(cfg_path)], env=env, log=log)
    if m["rc"] != 0:
        raise RuntimeError(f"run of {name} failed:\n{log.read_text()[-3000:]}")
    service_peak = vm_hwm(pid)
    run_dir = next(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    rec = json.loads((run_dir / "record.json").read_text())
    job = rec["jobs"][0]
    pred = read_image(run_dir / job["labels"]).data
    gt = np.load(gt_path)
    spatial = gt.shape
    ts = (spatial[0] if not z_tile else min(z_tile, spatial[0]),) * (len(spatial) - 2) + (min(tile, spatial[-2]), min(tile, spatial[-1]))
    ov = ((overlap if z_tile else 0),) * (len(spatial) - 2) + (min(overlap, tile // 4),) * 2
    tiles = tile_grid(spatial, ts, ov) if max(spatial[-2:]) > tile else tile_grid(spatial, spatial, 0)
    t0 = time.perf_counter()
    agreement = border_agreement(gt, pred, tiles)
    eval_s = time.perf_counter() - t0
    mpx = float(np.prod(spatial)) / 1e6
    infer = rec["stages"]["inference_wall_s"]
    out = {"shape": list(spatial), "megapixels": mpx, "tiles": len(tiles), "requests": job.get("requests"),
           "inference_wall_s": infer, "run_total_s": rec["stages"]["total_s"], "cli_wall_s": m["wall_s"],
           "service_predict_s": job.get("predict_s"), "mpx_per_s": mpx / infer, "s_per_mpx": infer / mpx,
           "orchestrator_peak_rss_mb": m["peak_rss_mb"], "orchestrator_cpu_s": m["cpu_s"],
           "service_peak_rss_mb": service_peak, "service_rss_before_mb": hwm_before, "service_hwm_reset": reset_ok,
           "generate_s": gen_s, "evaluate_s": eval_s, **agreement}
    logger.info("%s: %.1f s, %.2f Mpx/s, orchestrator %.0f MiB, service %.0f MiB, cut %d", name, infer, out["mpx_per_s"],
                out["orchestrator_peak_rss_mb"], service_peak, agreement["cut_by_tiling"])
    for f in (path, gt_path):
        f.unlink(missing_ok=True)
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    return out


def render(args: Any, payload: dict[str, Any], started: float, saved: dict[str, Any] | None = None) -> None:
    """Growth table, Markdown sections and the result files from the measured rows."""
    rows, skipped, single = payload["rows"], payload["skipped"], payload["single_tile"]
    tile, overlap = payload["tile"], payload["overlap"]
    base = rows[0]
    growth = []
    for r in rows:
        if not r["case"].startswith("2D"):
            continue
        growth.append({"case": r["case"], "pixels_x": r["megapixels"] / base["megapixels"],
                       "time_x": r["inference_wall_s"] / base["inference_wall_s"],
                       "time_per_pixel_x": r["s_per_mpx"] / base["s_per_mpx"],
                       "time_per_pixel_x_machine_speed_corrected": (r["s_per_mpx"] / r["service_s_per_tile_mpx"])
                       / (base["s_per_mpx"] / base["service_s_per_tile_mpx"]),
                       "orchestrator_rss_x": r["orchestrator_peak_rss_mb"] / base["orchestrator_peak_rss_mb"],
                       "service_rss_x": r["service_peak_rss_mb"] / base["service_peak_rss_mb"]})
    payload["growth"] = growth
    cols = ["case", "megapixels", "tiles", "inference_wall_s", "mpx_per_s", "vs_single_tile", "vs_service_speed",
            "ideal_vs_service_speed", "wall_over_service_predict", "orchestrator_peak_rss_mb", "service_peak_rss_mb", "n_true", "recall", "precision",
            "border_objects", "border_recall", "interior_recall", "cut_by_tiling", "border_split_rate", "interior_split_rate"]
    text = markdown_table(rows, cols) + (
        f"\nSingle tile ({tile}x{tile}, one Segment call, measured once before the sizes): {single['mpx_per_s']:.3f} Mpixel/s; "
        f"tiles {tile} px, overlap {overlap} px. vs_service_speed = tiled throughput / the service's own throughput on the "
        "pixels it was sent in the same run (tiles overlap, so its ideal is ideal_vs_service_speed = image pixels / sent pixels); "
        "wall_over_service_predict = inference wall / service predict time (1 = the service never waited). "
        "cut_by_tiling = pairs of predicted objects inside one true object that meet at a tile-core border (target 0); "
        "split rates compare border objects with the model's own rate inside tiles.\n")
    sections = [("Whole-slide tiling through StarDist", text),
                (f"Growth from {rows[0]['case']} (targets: time per pixel ~1 (linear), service RSS ~1 (flat))",
                 markdown_table(growth) + "\ntime_per_pixel_x_machine_speed_corrected divides each size's wall time per "
                 "pixel by the service's own predict time per pixel in that run: the load of the shared machine changes "
                 "during a long run, and this removes it.\n")]
    if skipped:
        sections.append(("Not measured", markdown_table(skipped)))
    write_results("wholeslide", args, payload, sections, started, saved)


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--tile", type=int, default=None, help="orchestrator tile size (default 1024, quick 256)")
    p.add_argument("--overlap", type=int, default=None, help="tile overlap (default 64, quick 32)")
    p.add_argument("--tile3d", type=int, default=None, help="tile size in Y/X for the volume (default 512, quick 64)")
    p.add_argument("--sizes", default="", help="comma-separated 2D edge lengths (default 2048,4096,8192; quick 512,1024)")
    p.add_argument("--rerender", type=Path, default=None,
                   help="recompute the derived figures and tables from a saved wholeslide.json (no new measurement)")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    started = time.perf_counter()
    if args.rerender:
        saved = json.loads(args.rerender.read_text())
        args.quick, args.threads = saved["quick"], saved["threads"]
        payload = {k: saved[k] for k in ("tile", "overlap", "single_tile", "rows", "skipped")}
        payload["rows"] = [derive(r, payload["tile"] if r["case"].startswith("2D") else (args.tile3d or 512), payload["overlap"])
                           for r in payload["rows"]]
        render(args, payload, started, saved)
        return 0
    from opsef_orchestrator.client import SegmenterClient

    models = starter_models("stardist")
    if not models:
        sys.exit("the StarDist starter model is needed")
    model = models["stardist"]
    tile = args.tile or (256 if args.quick else 1024)
    overlap = args.overlap or (32 if args.quick else 64)
    sizes = [int(s) for s in args.sizes.split(",") if s] or ([512, 1024] if args.quick else [2048, 4096, 8192])
    rows, skipped = [], []
    with Bench(args) as bench:
        addr = bench.up(["stardist"])["stardist"]
        with SegmenterClient(addr, timeout=3600, attempts=1) as client:
            single = single_tile_throughput(client, model, tile)
            model3d = next((m.name for m in client.models() if 3 in m.dims and m.weights_present), None)
        for s in sizes:
            r = run_size(bench, "stardist", model, addr, (s, s), tile, overlap)
            r["vs_single_tile"] = r["mpx_per_s"] / single["mpx_per_s"]
            rows.append({"case": f"2D {s}x{s}", **r})
        if model3d:
            shape3 = (8, 128, 128) if args.quick else (64, 1024, 1024)
            tile3 = args.tile3d or (64 if args.quick else 512)  # a whole 64x1024x1024 label volume exceeds a message
            r = run_size(bench, "stardist", model3d, addr, shape3, tile3, min(overlap, tile3 // 4), z_tile=0)
            rows.append({"case": "3D " + "x".join(map(str, shape3)), "model": model3d, **r})
        else:
            skipped.append({"case": "3D 64x1024x1024", "reason": "no StarDist 3D model with weights on this machine "
                            "(the published 3D_demo cannot be fetched offline; no project 3D StarDist model yet)"})
    payload = {"tile": tile, "overlap": overlap, "single_tile": single, "rows": [derive(r, tile if r["case"].startswith("2D") else (args.tile3d or 512), overlap) for r in rows],
               "skipped": skipped}
    render(args, payload, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
