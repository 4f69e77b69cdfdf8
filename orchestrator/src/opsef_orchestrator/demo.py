"""The main job's demo: segment a folder of real nuclei images with the starter models and score them.

Data: ``--data DIR`` (``images/`` + optional ``masks/`` of the same stems, or
a plain folder of images), else ``../shared/data/dsb2018/val`` when present,
else a small synthetic set the project generates (with ground truth).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from opsef_orchestrator.client import SegmentError, SegmenterClient
from opsef_orchestrator.evaluation import aggregate, evaluate_pair
from opsef_orchestrator.io import list_images, read_image, write_image, write_labels
from opsef_orchestrator.manager import ServiceManager
from opsef_orchestrator.paths import shared_data_dir
from opsef_orchestrator.segmentation import ModelRef

__all__ = ["DemoImage", "find_demo_data", "make_sample_set", "run_demo", "DEFAULT_DEMO_MODELS"]

logger = logging.getLogger(__name__)

#: The project's own starter models, one per CNN family.
DEFAULT_DEMO_MODELS = (
    ModelRef("stardist", "stardist_dsb2018_starter"),
    ModelRef("unet", "unet_dsb2018_starter"),
    ModelRef("cellpose", "cellpose_dsb2018_starter"),
)


@dataclasses.dataclass(frozen=True)
class DemoImage:
    image: Path
    mask: Path | None


def make_sample_set(folder: Path, n: int = 4, seed: int = 0) -> Path:
    """Write ``n`` synthetic nuclei images with masks to ``folder/images`` and ``folder/masks``."""
    from opsef_orchestrator.synthetic import synthetic_nuclei

    for i in range(n):
        img, lab = synthetic_nuclei((256, 256), n=25, seed=seed + i)
        write_image(folder / "images" / f"sample_{i:02d}.tif", img, "YX")
        write_labels(folder / "masks" / f"sample_{i:02d}.tif", lab)
    return folder


def find_demo_data(data: Path | None, output: Path) -> tuple[Path, list[DemoImage]]:
    """The demo's images (and masks where present)."""
    if data is None:
        shared = shared_data_dir()
        if shared is not None and (shared / "dsb2018" / "val" / "images").is_dir():
            data = shared / "dsb2018" / "val"
        else:
            data = make_sample_set(output / "sample-data")
            logger.info("no real data found: generated a synthetic sample set in %s", data)
    data = Path(data)
    if not data.is_dir():
        raise ValueError(f"--data {data}: not a folder")
    image_dir = data / "images" if (data / "images").is_dir() else data
    masks = data / "masks"
    items = []
    for p in list_images(image_dir):
        cands = sorted(masks.glob(p.stem + ".*")) if masks.is_dir() else []
        items.append(DemoImage(p, cands[0] if cands else None))
    if not items:
        raise ValueError(f"--data {data}: no images found")
    return data, items


def _service_input(path: Path) -> tuple[np.ndarray, str]:
    img = read_image(path)
    data, axes = img.data, img.axes
    if axes.endswith("C") and data.shape[-1] == 4:  # RGBA PNG: drop alpha
        data = data[..., :3]
    if "T" in axes:
        raise ValueError(f"{path}: time series are not part of the demo")
    return np.ascontiguousarray(data), axes


def run_demo(
    output: Path,
    data: Path | None = None,
    models: tuple[ModelRef, ...] = DEFAULT_DEMO_MODELS,
    manager: ServiceManager | None = None,
    echo: Callable[[str], None] = logger.info,
) -> dict[str, Any]:
    """Start the needed services, segment every image with every model, write labels and scores.

    Returns ``{"data": path, "models": {ref: summary}}`` where each summary has
    precision, recall, F1 and AP at IoU 0.5 (when masks exist), object counts
    and the label files.
    """
    import pandas as pd

    from opsef_orchestrator.tables import write_table

    output = Path(output)
    data_dir, items = find_demo_data(data, output)
    manager = manager or ServiceManager()
    services = sorted({m.service for m in models})
    echo(f"data: {data_dir} ({len(items)} images); starting services: {', '.join(services)}")
    endpoints = manager.up(services)
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for ref in models:
        evals = []
        with SegmenterClient(endpoints[ref.service]) as client:
            for item in items:
                image, axes = _service_input(item.image)
                try:
                    res = client.segment(image, axes, ref.model, request_id=item.image.name)
                except SegmentError as exc:
                    raise RuntimeError(f"{ref}: {item.image.name}: {exc.code.name}: {exc.details}") from None
                out = write_labels(output / "labels" / f"{ref.service}__{ref.model}" / f"{item.image.stem}_labels.tif", res.labels)
                row: dict[str, Any] = {"model": str(ref), "image": item.image.name, "objects": res.object_count,
                                       "predict_s": round(res.timings["predict_s"], 3), "labels": str(out)}
                if item.mask is not None:
                    gt = read_image(item.mask).data
                    ev = evaluate_pair(gt, res.labels, thresholds=(0.5,))
                    evals.append(ev)
                    r = ev["per_threshold"][0.5]
                    row.update(n_true=r.n_true, tp=r.tp, fp=r.fp, fn=r.fn, precision=r.precision, recall=r.recall, f1=r.f1)
                rows.append(row)
        s: dict[str, Any] = {"images": len(items), "objects": int(sum(r["objects"] for r in rows if r["model"] == str(ref)))}
        if evals:
            agg = aggregate(evals)["per_threshold"][0.5]
            s.update(precision=agg.precision, recall=agg.recall, f1=agg.f1, ap=agg.ap, n_true=agg.n_true, n_pred=agg.n_pred)
            echo(f"{str(ref):<45} precision {agg.precision:.3f}  recall {agg.recall:.3f}  F1 {agg.f1:.3f}  "
                 f"AP@0.5 {agg.ap:.3f}  ({agg.n_pred} objects found, {agg.n_true} true)")
        else:
            echo(f"{str(ref):<45} {s['objects']} objects in {len(items)} images (no ground truth)")
        summary[str(ref)] = s
    write_table(pd.DataFrame(rows), output / "demo_results.csv")
    echo(f"label images under {output / 'labels'}; per-image scores in {output / 'demo_results.csv'}")
    return {"data": str(data_dir), "models": summary}
