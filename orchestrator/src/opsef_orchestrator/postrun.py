"""After inference: evaluation and leaderboard, measurements and filters, overlays, montages and the report.

Everything here reads the run folder's label images and writes tables and
pictures beside them; it never talks to a service. Per-job results (evaluation
rows, measurement tables, filtered labels, overlays) and per-image montages and
plots are kept in the run root's content cache (:mod:`opsef_orchestrator.cache`),
keyed by the labels' content key and everything else they depend on, so
re-running a finished run recomputes none of them; the tables, stacks and the
report of the new run folder are still written anew.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd
from opsef_protocol.manifest import sha256_file

from opsef_orchestrator.cache import ContentCache, link_or_copy
from opsef_orchestrator.evaluation import evaluate_pair, evaluation_rows, leaderboard
from opsef_orchestrator.io import read_image
from opsef_orchestrator.tables import write_table

if TYPE_CHECKING:
    from opsef_orchestrator.config import RunConfig
    from opsef_orchestrator.engine import ImageItem, Plan

__all__ = ["finalize", "MONTAGE_MAX_IMAGES"]

logger = logging.getLogger(__name__)
#: Montages are drawn for at most this many images (the report stays small).
MONTAGE_MAX_IMAGES = 6


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers (for JSON)."""
    return value.item() if isinstance(value, np.generic) else value


def _job_key(store: ContentCache, kind: str, e: dict[str, Any], *parts: Any) -> str | None:
    """Cache key of a per-job result, or None when the job's labels have no content key (nothing is cached)."""
    return store.key(kind, e["key"], *parts) if e.get("key") else None


def _evaluate(cfg: "RunConfig", plan: "Plan", run_dir: Path, ok: list[dict[str, Any]],
              store: ContentCache) -> pd.DataFrame | None:
    gts = {i.stem: i.ground_truth for i in plan.images if i.ground_truth is not None}
    if not gts:
        return None
    rows: list[dict[str, Any]] = []
    gt_cache: dict[str, np.ndarray] = {}
    gt_digests: dict[Path, str] = {}
    for e in ok:
        gt_path = gts.get(e["stem"])
        if gt_path is None:
            continue
        if gt_path not in gt_digests:
            gt_digests[gt_path] = sha256_file(gt_path)
        key = _job_key(store, "evaluation", e, gt_digests[gt_path])
        scores = store.get_json("evaluation", key) if key else None
        if scores is None:
            if e["stem"] not in gt_cache:
                gt_cache = {e["stem"]: read_image(gt_path).data}
            pred = read_image(run_dir / e["labels"]).data
            gt = gt_cache[e["stem"]]
            if gt.shape != pred.shape:
                logger.warning("ground truth %s has shape %s, labels %s: not evaluated", gt_path, gt.shape, pred.shape)
                continue
            scores = [{k: _plain(v) for k, v in r.items()} for r in evaluation_rows(evaluate_pair(gt, pred))]
            if key:
                store.put_json("evaluation", key, scores)
        ids = {"image": e["stem"], "pipeline": e["pipeline"], "model": e["model"],
               "parameters": json.dumps(e["params"], sort_keys=True), "combination": e["combination"]}
        rows += [{**ids, **r} for r in scores]
    if not rows:
        return None
    df = pd.DataFrame(rows)
    d = cfg.outputs.csv_dialect
    write_table(df, run_dir / "tables" / "evaluation.csv", dialect=d, parquet=cfg.outputs.parquet)
    board = leaderboard(df, by=["combination", "pipeline", "model", "parameters"])
    write_table(board, run_dir / "tables" / "leaderboard.csv", dialect=d, parquet=cfg.outputs.parquet)
    return board


def _file_digest(path: Path, digests: dict[Path, str]) -> str:
    """sha256 of a file, computed once per run (``digests``); "" when there is no such file."""
    if path not in digests:
        digests[path] = sha256_file(path) if path.is_file() else ""
    return digests[path]


def _preprocessed(run_dir: Path, e: dict[str, Any], digests: dict[Path, str]) -> tuple[Path, str | None]:
    """The preprocessed image of a job and its content digest (None when there is none)."""
    pre = run_dir / "preprocessed" / e["pipeline"] / f"{e['stem']}.tif"
    return pre, _file_digest(pre, digests) or None


def _intensity_source(cfg: "RunConfig", items: dict[str, "ImageItem"], run_dir: Path, e: dict[str, Any],
                      digests: dict[Path, str]) -> tuple[Callable[[], np.ndarray] | None, str | None]:
    """Loader and content digest of the image a job's intensities are measured on (``postprocess.intensity_image``)."""
    if cfg.postprocess.intensity_image == "input" and e["stem"] in items:
        item = items[e["stem"]]
        read = cfg.inputs[item.input_index].read
        digest = _file_digest(item.path, digests)
        if not digest:
            return None, None
        return (lambda: read_image(item.path, **read.kwargs()).data), f"input:{digest}:{read.model_dump_json()}"
    pre, pre_digest = _preprocessed(run_dir, e, digests)
    return ((lambda: read_image(pre).data) if pre_digest else None), pre_digest


def _mask_source(cfg: "RunConfig", items: dict[str, "ImageItem"], e: dict[str, Any],
                 digests: dict[Path, str]) -> tuple[Callable[[], np.ndarray] | None, str | None]:
    """Loader and content digest of the class mask of a job's image (``postprocess.classify``), or (None, None)."""
    spec = cfg.postprocess.classify
    item = items.get(e["stem"])
    if spec is None or item is None:
        return None, None
    if spec.mask is not None:
        path = spec.mask.path / spec.mask.pattern.format(stem=item.path.stem)
        if not path.is_file():
            logger.warning("postprocess.classify.mask: no mask %s for input %s; its objects get class 0", path, item.path)
            return None, None
        return (lambda: read_image(path).data), f"mask:{_file_digest(path, digests)}"
    from opsef_orchestrator.classify import mask_from_channel

    read = cfg.inputs[item.input_index].read.model_copy(update={"channel": spec.channel})
    making = spec.model_dump(include={"filter", "sigma", "method", "factor", "opening", "closing", "fill_holes", "min_size"})

    def load() -> np.ndarray:
        img = read_image(item.path, **read.kwargs())
        data = img.data[..., 0] if img.axes.endswith("C") else img.data
        return mask_from_channel(data, **making)
    return load, f"channel:{_file_digest(item.path, digests)}:{read.model_dump_json()}:{json.dumps(making, sort_keys=True)}"


def _derived_labels(store: ContentCache, kind: str, key: str | None, dst: Path, labels: np.ndarray) -> None:
    """Write a label image derived from a job's labels to ``dst``, through the cache when the job has a key."""
    from opsef_orchestrator.io import write_labels

    if key:
        write_labels(store.path(kind, key, ".tif"), labels)
        link_or_copy(store.path(kind, key, ".tif"), dst)
    else:
        write_labels(dst, labels)


def _measure(cfg: "RunConfig", plan: "Plan", run_dir: Path, ok: list[dict[str, Any]], store: ContentCache,
             digests: dict[Path, str]) -> pd.DataFrame | None:
    from opsef_orchestrator.classify import add_classes, class_image
    from opsef_orchestrator.measure import measure_objects
    from opsef_orchestrator.postprocess import filter_objects

    filters = dict(cfg.postprocess.filters)
    classify = cfg.postprocess.classify
    items = {i.stem: i for i in plan.images}
    mask_memo: dict[str, np.ndarray | None] = {}  # the class mask of the current image (jobs come image by image)
    tables = []
    for e in ok:
        load_intensity, intensity_digest = _intensity_source(cfg, items, run_dir, e, digests)
        load_mask, mask_digest = _mask_source(cfg, items, e, digests)
        key = _job_key(store, "measurements", e, intensity_digest, filters,
                       classify.model_dump(mode="json") if classify else None, mask_digest)
        filtered = run_dir / "labels_filtered" / e["combination"] / f"{e['stem']}.tif"
        classes = run_dir / "classes" / e["combination"] / f"{e['stem']}.tif"
        table = store.get_frame("measurements", key) if key else None
        if table is not None and filters and not store.link_out("labels_filtered", key, ".tif", filtered):
            table = None
        if table is not None and load_mask is not None and not store.link_out("classes", key, ".tif", classes):
            table = None
        if table is None:
            labels = read_image(run_dir / e["labels"]).data
            intensity = load_intensity() if load_intensity is not None else None
            if intensity is not None and intensity.shape[: labels.ndim] != labels.shape:
                logger.warning("%s: intensity image of shape %s does not match labels %s; measured without intensities",
                               e["id"], intensity.shape, labels.shape)
                intensity = None
            table = measure_objects(labels, intensity=intensity)
            kept_labels = labels
            if filters:
                kept_labels, kept = filter_objects(labels, table, filters)
                table = table.assign(kept=table["label"].isin(kept["label"]))
                _derived_labels(store, "labels_filtered", key, filtered, kept_labels)
            if classify is not None:
                mask = None
                if load_mask is not None:
                    if e["stem"] not in mask_memo:
                        mask_memo.clear()
                        try:
                            mask_memo[e["stem"]] = load_mask()
                        except (OSError, ValueError) as exc:
                            logger.warning("postprocess.classify: no mask for %s: %s", e["stem"], exc)
                            mask_memo[e["stem"]] = None
                    mask = mask_memo[e["stem"]]
                if mask is not None and mask.shape != labels.shape:
                    logger.warning("postprocess.classify: mask of %s has shape %s, labels %s; its objects get class 0",
                                   e["stem"], mask.shape, labels.shape)
                    mask = None
                table = add_classes(table, labels, mask if mask is not None else np.zeros(labels.shape, bool),
                                    by=classify.assign, min_fraction=classify.min_fraction,
                                    class_names=classify.names or None)
                if load_mask is not None:
                    _derived_labels(store, "classes", key, classes,
                                    class_image(kept_labels, table.set_index("label")["class"]))
            if key:
                store.put_frame("measurements", key, table)
        tables.append(table.assign(image=e["stem"], pipeline=e["pipeline"], model=e["model"], combination=e["combination"]))
    if not tables:
        return None
    df = pd.concat(tables, ignore_index=True)
    first = ["image", "combination", "pipeline", "model", "label"]
    df = df[first + [c for c in df.columns if c not in first]]
    write_table(df, run_dir / "tables" / "objects.csv", dialect=cfg.outputs.csv_dialect, parquet=cfg.outputs.parquet)
    return df


def _overlay(run_dir: Path, e: dict[str, Any], store: ContentCache, digests: dict[Path, str]) -> tuple[np.ndarray, str | None]:
    """Outlines of a job's labels on its preprocessed image (volumes: the middle plane), and the overlay's cache key."""
    from opsef_orchestrator.overlays import outline_overlay

    pre, pre_digest = _preprocessed(run_dir, e, digests)
    key = _job_key(store, "overlays", e, pre_digest)
    ov = store.get_array("overlays", key) if key else None
    if ov is None:
        image = read_image(pre).data if pre_digest else None
        labels = read_image(run_dir / e["labels"]).data
        if labels.ndim == 3:  # volumes: the middle plane
            z = labels.shape[0] // 2
            if image is not None and image.ndim >= 3 and image.shape[0] == labels.shape[0]:
                image = image[z]
            labels = labels[z]
        ov = outline_overlay(image, labels)
        if key:
            store.put_array("overlays", key, ov)
    return ov, key


def _pictures(cfg: "RunConfig", plan: "Plan", run_dir: Path, ok: list[dict[str, Any]], board: pd.DataFrame | None,
              objects: pd.DataFrame | None, store: ContentCache, digests: dict[Path, str]) -> None:
    # Figures are drawn on their own Agg canvas: pyplot's backend is left alone (a notebook keeps its inline plots).
    from opsef_orchestrator.overlays import figure_to_png, montage_figure, write_overlay_stack
    from opsef_orchestrator.report import write_report

    by_image: dict[str, list[dict[str, Any]]] = {}
    for e in ok:
        by_image.setdefault(e["stem"], []).append(e)
    montages: dict[str, Any] = {}
    stack, names = [], []
    columns = sorted({_column_title(e["combination"]) for e in ok})
    for n, (stem, entries) in enumerate(sorted(by_image.items())):
        grid, keys = {}, []
        for e in entries:
            ov, key = _overlay(run_dir, e, store, digests)
            grid[(e["pipeline"], _column_title(e["combination"]))] = ov
            keys.append((e["pipeline"], e["combination"], key))
            stack.append(ov)
            names.append(f"{stem} {e['combination']}")
        if n < MONTAGE_MAX_IMAGES:
            rows = [p.name for p in cfg.pipelines]
            title = stem if len(stem) <= 40 else stem[:37] + "..."
            mkey = store.key("montages", sorted(keys), rows, columns, title) if all(k for _, _, k in keys) else None
            png = (store.get_pngs("montages", mkey) or {}).get("montage") if mkey else None
            if png is None:
                png = figure_to_png(montage_figure(grid, rows=rows, columns=columns, title=title))
                if mkey:
                    store.put_pngs("montages", mkey, {"montage": png})
            (run_dir / "montages").mkdir(exist_ok=True)
            (run_dir / "montages" / f"{stem}.png").write_bytes(png)
            montages[stem] = png
    if stack and cfg.outputs.overlays:
        write_overlay_stack(stack, run_dir / "overlays" / "overlays_stack.tif", slice_labels=names)
    plots = _plots(cfg, run_dir, objects, board, store)
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


def _plots(cfg: "RunConfig", run_dir: Path, objects: pd.DataFrame | None, board: pd.DataFrame | None,
           store: ContentCache) -> dict[str, bytes]:
    """Scatter (area x circularity, filter box drawn) and PCA of the objects of the best (or first) combination."""
    if objects is None or objects.empty:
        return {}
    combo = str(board.sort_values("rank")["combination"].iloc[0]) if board is not None else str(objects["combination"].iloc[0])
    table = objects[objects["combination"] == combo]
    key = store.key("plots", combo, dict(cfg.postprocess.filters), list(table.columns),
                    pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes().hex())
    plots = store.get_pngs("plots", key)
    if plots is None:
        plots = _draw_plots(cfg, table, combo)
        store.put_pngs("plots", key, plots)
    (run_dir / "plots").mkdir(exist_ok=True)
    for name, png in plots.items():
        (run_dir / "plots" / ("00_scatter.png" if name.startswith(("area ", "volume ")) else "01_pca.png")).write_bytes(png)
    return plots


def _draw_plots(cfg: "RunConfig", table: pd.DataFrame, combo: str) -> dict[str, bytes]:
    from opsef_orchestrator.overlays import figure_to_png
    from opsef_orchestrator.plots import embedding_plot, scatter_plot

    size = "area" if "area" in table else "volume"
    shape = "circularity" if "circularity" in table else "sphericity"
    features = [c for c in (size, shape, "solidity", "equivalent_diameter", "major_axis_length", "minor_axis_length") if c in table]
    colour = next((c for c in ("class_name", "class", "kept") if c in table), None)
    plots: dict[str, bytes] = {}
    figures = {
        f"{size} x {shape} ({combo})": lambda: scatter_plot(table, size, shape, color_by=colour,
                                                            ranges=dict(cfg.postprocess.filters) or None),
        f"PCA of {', '.join(features)} ({combo})": lambda: embedding_plot(
            table, features, "pca", **({"color_by": colour} if colour in ("class_name", "class") else {"n_clusters": 3})),
    }
    for name, make in figures.items():
        try:
            fig = make()
        except ValueError as exc:  # e.g. too few objects for an embedding
            logger.info("plot %r skipped: %s", name, exc)
            continue
        plots[name] = figure_to_png(fig)
    return plots


def finalize(cfg: "RunConfig", plan: "Plan", run_dir: Path, entries: dict[str, dict[str, Any]],
             store: ContentCache | None = None) -> pd.DataFrame | None:
    """Evaluation, measurements, pictures and report of a run; returns the leaderboard (or None).

    ``store`` is the run root's content cache (default ``<outputs.root>/.cache``).
    """
    ok = sorted((e for e in entries.values() if e["status"] in ("ok", "cached")), key=lambda e: e["id"])
    store = store if store is not None else ContentCache(cfg.outputs.root / ".cache")
    digests: dict[Path, str] = {}  # preprocessed image -> sha256, computed once per run
    board = _evaluate(cfg, plan, run_dir, ok, store)
    objects = _measure(cfg, plan, run_dir, ok, store, digests) if cfg.postprocess.measure and cfg.outputs.tables else None
    if cfg.outputs.overlays or cfg.outputs.report:
        _pictures(cfg, plan, run_dir, ok, board, objects, store, digests)
    return board
