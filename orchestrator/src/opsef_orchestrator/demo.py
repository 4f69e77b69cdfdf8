"""The main job's demo: a sweep of the starter models over a folder of real nuclei images, scored.

Data: ``--data DIR`` (``images/`` + optional ``masks/`` of the same stems, or
a plain folder of images), else ``../shared/data/dsb2018/val`` when present,
else a small synthetic set the project generates (with ground truth). The demo
is an ordinary run of the run engine (labels, tables, leaderboard, montages,
HTML report), with the services started automatically.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from opsef_orchestrator.config import RunConfig
from opsef_orchestrator.engine import RunResult, run
from opsef_orchestrator.io import write_image, write_labels
from opsef_orchestrator.manager import ServiceManager
from opsef_orchestrator.paths import shared_data_dir
from opsef_orchestrator.segmentation import ModelRef

__all__ = ["find_demo_data", "make_sample_set", "demo_config", "run_demo", "DEFAULT_DEMO_MODELS"]

logger = logging.getLogger(__name__)

#: The project's own starter models, one per CNN family.
DEFAULT_DEMO_MODELS = (
    ModelRef("stardist", "stardist_dsb2018_starter"),
    ModelRef("unet", "unet_dsb2018_starter"),
    ModelRef("cellpose", "cellpose_dsb2018_starter"),
)


def make_sample_set(folder: Path, n: int = 4, seed: int = 0) -> Path:
    """Write ``n`` synthetic nuclei images with masks to ``folder/images`` and ``folder/masks``."""
    from opsef_orchestrator.synthetic import synthetic_nuclei

    for i in range(n):
        img, lab = synthetic_nuclei((256, 256), n=25, seed=seed + i)
        write_image(folder / "images" / f"sample_{i:02d}.tif", img, "YX")
        write_labels(folder / "masks" / f"sample_{i:02d}.tif", lab)
    return folder


def find_demo_data(data: Path | None, output: Path) -> tuple[Path, Path | None]:
    """The demo's image folder and its mask folder (or None)."""
    if data is None:
        shared = shared_data_dir()
        if shared is not None and (shared / "dsb2018" / "val" / "images").is_dir():
            data = shared / "dsb2018" / "val"
        else:
            data = make_sample_set(output / "sample-data")
            logger.info("no real data found: generated a synthetic sample set in %s", data)
    data = Path(data).resolve()
    if not data.is_dir():
        raise ValueError(f"--data {data}: not a folder")
    images = data / "images" if (data / "images").is_dir() else data
    masks = data / "masks" if (data / "masks").is_dir() else None
    return images, masks


def demo_config(images: Path, masks: Path | None, output: Path, models: tuple[ModelRef, ...]) -> RunConfig:
    """The demo as a run configuration: every image x the 'none' pipeline x each model."""
    data: dict[str, Any] = {
        "name": "demo",
        "inputs": [{"path": str(images)}],
        "models": [{"model": str(m)} for m in models],
        "outputs": {"root": str(Path(output).resolve())},
    }
    if masks is not None:
        mask_ext = next((p.suffix for p in sorted(masks.iterdir()) if p.is_file()), ".tif")
        data["ground_truth"] = {"path": str(masks), "pattern": "{stem}" + mask_ext}
    return RunConfig.model_validate(data)


def run_demo(
    output: Path,
    data: Path | None = None,
    models: tuple[ModelRef, ...] = DEFAULT_DEMO_MODELS,
    manager: ServiceManager | None = None,
    echo: Callable[[str], None] = logger.info,
) -> RunResult:
    """Start the needed services, segment every image with every model, write labels, scores and a report."""
    output = Path(output)
    images, masks = find_demo_data(data, output)
    cfg = demo_config(images, masks, output, models)
    echo(f"data: {images} ({'with' if masks else 'without'} ground truth); models: {', '.join(map(str, models))}")
    result = run(cfg, manager=manager or ServiceManager(), progress=echo)
    board = result.evaluation
    if board is not None:
        for _, row in board.sort_values("model").iterrows():
            echo(f"{row['model']:<40} precision {row['precision']:.3f}  recall {row['recall']:.3f}  "
                 f"F1 {row['f1@0.5']:.3f}  AP@0.5 {row['ap@0.5']:.3f}  mAP@0.5:0.95 {row['mAP']:.3f}  "
                 f"({int(row['n_pred'])} objects found, {int(row['n_true'])} true, {int(row['n_images'])} images)")
    for f in result.failed:
        echo(f"FAILED {f['id']}: {f.get('error', '')}")
    echo(f"run folder: {result.run_dir} (labels/, tables/, montages/, report.html)")
    return result
