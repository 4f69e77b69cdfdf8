"""After inference: evaluation and leaderboard, measurements and filters, overlays, montages and the report.

Everything here reads the run folder's label images and writes tables and
pictures beside them; it never talks to a service.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from opsef_orchestrator.evaluation import evaluate_pair, evaluation_rows, leaderboard
from opsef_orchestrator.io import read_image
from opsef_orchestrator.tables import write_table

if TYPE_CHECKING:
    from opsef_orchestrator.config import RunConfig
    from opsef_orchestrator.engine import Plan

__all__ = ["finalize", "MONTAGE_MAX_IMAGES"]

logger = logging.getLogger(__name__)
#: Montages are drawn for at most this many images (the report stays small).
MONTAGE_MAX_IMAGES = 6


def _evaluate(cfg: "RunConfig", plan: "Plan", run_dir: Path, ok: list[dict[str, Any]]) -> pd.DataFrame | None:
    gts = {i.stem: i.ground_truth for i in plan.images if i.ground_truth is not None}
    if not gts:
        return None
    rows: list[dict[str, Any]] = []
    gt_cache: dict[str, np.ndarray] = {}
    for e in ok:
        gt_path = gts.get(e["stem"])
        if gt_path is None:
            continue
        if e["stem"] not in gt_cache:
            gt_cache = {e["stem"]: read_image(gt_path).data}
        pred = read_image(run_dir / e["labels"]).data
        gt = gt_cache[e["stem"]]
        if gt.shape != pred.shape:
            logger.warning("ground truth %s has shape %s, labels %s: not evaluated", gt_path, gt.shape, pred.shape)
            continue
        rows += evaluation_rows(evaluate_pair(gt, pred), image=e["stem"], pipeline=e["pipeline"], model=e["model"],
                                parameters=json.dumps(e["params"], sort_keys=True), combination=e["combination"])
    if not rows:
        return None
    df = pd.DataFrame(rows)
    d = cfg.outputs.csv_dialect
    write_table(df, run_dir / "tables" / "evaluation.csv", dialect=d)
    board = leaderboard(df, by=["combination", "pipeline", "model", "parameters"])
    write_table(board, run_dir / "tables" / "leaderboard.csv", dialect=d)
    return board


def _measure(cfg: "RunConfig", run_dir: Path, ok: list[dict[str, Any]]) -> pd.DataFrame | None:
    from opsef_orchestrator.io import write_labels
    from opsef_orchestrator.measure import measure_objects
    from opsef_orchestrator.postprocess import filter_objects

    tables = []
    for e in ok:
        labels = read_image(run_dir / e["labels"]).data
        pre = run_dir / "preprocessed" / e["pipeline"] / f"{e['stem']}.tif"
        intensity = None
        if pre.is_file():
            img = read_image(pre)
            if img.data.shape[: labels.ndim] == labels.shape:
                intensity = img.data
        table = measure_objects(labels, intensity=intensity)
        if cfg.postprocess.filters:
            labels, kept = filter_objects(labels, table, dict(cfg.postprocess.filters))
            table = table.assign(kept=table["label"].isin(kept["label"]))
            write_labels(run_dir / "labels_filtered" / e["combination"] / f"{e['stem']}.tif", labels)
        tables.append(table.assign(image=e["stem"], pipeline=e["pipeline"], model=e["model"], combination=e["combination"]))
    if not tables:
        return None
    df = pd.concat(tables, ignore_index=True)
    first = ["image", "combination", "pipeline", "model", "label"]
    df = df[first + [c for c in df.columns if c not in first]]
    write_table(df, run_dir / "tables" / "objects.csv", dialect=cfg.outputs.csv_dialect)
    return df


def _pictures(cfg: "RunConfig", plan: "Plan", run_dir: Path, ok: list[dict[str, Any]], board: pd.DataFrame | None,
              objects: pd.DataFrame | None) -> None:
    # Figures are drawn on their own Agg canvas: pyplot's backend is left alone (a notebook keeps its inline plots).
    from opsef_orchestrator.overlays import figure_to_png, montage_figure, outline_overlay, write_overlay_stack
    from opsef_orchestrator.report import write_report

    by_image: dict[str, list[dict[str, Any]]] = {}
    for e in ok:
        by_image.setdefault(e["stem"], []).append(e)
    montages: dict[str, Any] = {}
    stack, names = [], []
    columns = sorted({_column_title(e["combination"]) for e in ok})
    for n, (stem, entries) in enumerate(sorted(by_image.items())):
        grid = {}
        for e in entries:
            pre = run_dir / "preprocessed" / e["pipeline"] / f"{stem}.tif"
            image = read_image(pre).data if pre.is_file() else None
            labels = read_image(run_dir / e["labels"]).data
            if labels.ndim == 3:  # volumes: the middle plane
                z = labels.shape[0] // 2
                labels = labels[z]
                image = image[z] if image is not None and image.ndim >= 3 and image.shape[0] == read_image(run_dir / e["labels"]).data.shape[0] else image
            ov = outline_overlay(image, labels)
            grid[(e["pipeline"], _column_title(e["combination"]))] = ov
            stack.append(ov)
            names.append(f"{stem} {e['combination']}")
        if n < MONTAGE_MAX_IMAGES:
            fig = montage_figure(grid, rows=[p.name for p in cfg.pipelines], columns=columns, title=stem if len(stem) <= 40 else stem[:37] + "...")
            png = figure_to_png(fig)
            (run_dir / "montages").mkdir(exist_ok=True)
            (run_dir / "montages" / f"{stem}.png").write_bytes(png)
            montages[stem] = png
    if stack:
        write_overlay_stack(stack, run_dir / "overlays" / "overlays_stack.tif", slice_labels=names)
    plots = _plots(cfg, run_dir, objects, board)
    if cfg.outputs.report:
        record_path = run_dir / "record.json"
        record = json.loads(record_path.read_text()) if record_path.is_file() else {"config": cfg.model_dump(mode="json")}
        tables = {}
        if objects is not None:
            tables["objects (first 50 rows)"] = objects.head(50)
        write_report(run_dir / "report.html", title=f"OpSeF run {run_dir.name}", montages=montages, leaderboard=board,
                     plots=plots, tables=tables, run_record=record)


def _column_title(combination: str) -> str:
    r"""Montage column title of a combination: ``service:model`` and its parameters on a second line.

    Examples
    --------
    >>> _column_title("none__cellpose-cellpose_dsb2018_starter__scale0.6")
    'cellpose:cellpose_dsb2018_starter\nscale0.6'
    >>> _column_title("m3__unet-unet_starter__default")
    'unet:unet_starter'
    """
    _, model, params = combination.split("__", 2)
    title = model.replace("-", ":", 1)
    return title if params == "default" else f"{title}\n{params}"


def _plots(cfg: "RunConfig", run_dir: Path, objects: pd.DataFrame | None, board: pd.DataFrame | None) -> dict[str, bytes]:
    """Scatter (area x circularity, filter box drawn) and PCA of the objects of the best (or first) combination."""
    from opsef_orchestrator.overlays import figure_to_png
    from opsef_orchestrator.plots import embedding_plot, scatter_plot

    if objects is None or objects.empty:
        return {}
    combo = str(board.sort_values("rank")["combination"].iloc[0]) if board is not None else str(objects["combination"].iloc[0])
    table = objects[objects["combination"] == combo]
    size = "area" if "area" in table else "volume"
    shape = "circularity" if "circularity" in table else "sphericity"
    features = [c for c in (size, shape, "solidity", "equivalent_diameter", "major_axis_length", "minor_axis_length") if c in table]
    plots: dict[str, bytes] = {}
    figures = {
        f"{size} x {shape} ({combo})": lambda: scatter_plot(table, size, shape, color_by="kept" if "kept" in table else None,
                                                            ranges=dict(cfg.postprocess.filters) or None),
        f"PCA of {', '.join(features)} ({combo})": lambda: embedding_plot(table, features, "pca", n_clusters=3),
    }
    (run_dir / "plots").mkdir(exist_ok=True)
    for i, (name, make) in enumerate(figures.items()):
        try:
            fig = make()
        except ValueError as exc:  # e.g. too few objects for an embedding
            logger.info("plot %r skipped: %s", name, exc)
            continue
        png = figure_to_png(fig)
        (run_dir / "plots" / f"{i:02d}_{'scatter' if i == 0 else 'pca'}.png").write_bytes(png)
        plots[name] = png
    return plots


def finalize(cfg: "RunConfig", plan: "Plan", run_dir: Path, entries: dict[str, dict[str, Any]]) -> pd.DataFrame | None:
    """Evaluation, measurements, pictures and report of a run; returns the leaderboard (or None)."""
    ok = sorted((e for e in entries.values() if e["status"] in ("ok", "cached")), key=lambda e: e["id"])
    board = _evaluate(cfg, plan, run_dir, ok)
    objects = _measure(cfg, run_dir, ok) if cfg.postprocess.measure and cfg.outputs.tables else None
    if cfg.outputs.overlays or cfg.outputs.report:
        _pictures(cfg, plan, run_dir, ok, board, objects)
    return board
