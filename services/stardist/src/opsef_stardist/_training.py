"""Helpers shared by the StarDist training commands (:mod:`opsef_stardist.train`, :mod:`opsef_stardist.train3d`).

Nothing here imports TensorFlow at module level, so the commands can still parse
their arguments before TensorFlow is imported.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = [
    "MODEL_FILES",
    "add_schedule_arguments",
    "add_output_arguments",
    "output_folder",
    "framework_env",
    "fresh_temp_dir",
    "training_config",
    "fit_and_tune",
    "matching_scores",
    "finish_model_folder",
    "manifest_header",
    "training_record",
    "write_model",
]

#: Files of a trained StarDist model folder that the manifest lists (with their sha256).
MODEL_FILES = ("config.json", "thresholds.json", "weights_best.h5")


def add_schedule_arguments(p: argparse.ArgumentParser, epochs: int, steps: int, batch: int, patch: dict[str, Any],
                           rays: int, depth: int) -> None:
    """Add ``--epochs --steps --batch --patch --rays --depth --filters`` (with these defaults; ``patch``: its keywords)."""
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--steps", type=int, default=steps, help="steps per epoch")
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--patch", type=int, **patch)
    p.add_argument("--rays", type=int, default=rays)
    p.add_argument("--depth", type=int, default=depth, help="U-Net depth")
    p.add_argument("--filters", type=int, default=16, help="U-Net base filters")


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--seed --version --force``."""
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--force", action="store_true", help="replace an existing model folder")


def output_folder(args: argparse.Namespace) -> Path | None:
    """Set up logging; the resolved ``args.out``, or None (after a message on stderr) if it exists without ``--force``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = args.out.resolve()
    if out.exists() and not args.force:
        sys.stderr.write(f"{out} exists; pass --force to replace it\n")
        return None
    return out


def framework_env() -> None:
    """Quiet TensorFlow and keep Keras downloads in the OpSeF cache (environment defaults, before TF is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_HOME", str(Path(os.environ.get("OPSEF_CACHE", Path.home() / ".cache" / "opsef")) / "frameworks" / "stardist" / "keras"))


def fresh_temp_dir(out: Path) -> Path:
    """The (emptied) hidden sibling ``.<name>.tmp`` of ``out`` that the model is trained into."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def training_config(args: argparse.Namespace, patch: tuple[int, ...], patience: int) -> dict[str, Any]:
    """The U-Net and training keywords of a StarDist ``Config2D`` / ``Config3D`` from the parsed arguments."""
    return {
        "unet_n_depth": args.depth,
        "unet_n_filter_base": args.filters,
        "train_patch_size": patch,
        "train_batch_size": args.batch,
        "train_epochs": args.epochs,
        "train_steps_per_epoch": args.steps,
        "train_tensorboard": False,
        "train_reduce_lr": {"factor": 0.5, "patience": patience, "min_delta": 0},
    }


def fit_and_tune(model: Any, fit: tuple[Sequence[Any], Sequence[Any]], val: tuple[Sequence[Any], Sequence[Any]],
                 tune: tuple[Sequence[Any], Sequence[Any]], augmenter: Callable[..., Any], epochs: int, steps: int,
                 **optimize: Any) -> tuple[float, float]:
    """Train ``model`` on ``fit`` (validating on ``val``), then tune its thresholds on ``tune``; returns both times (s)."""
    t0 = time.perf_counter()
    model.train(fit[0], fit[1], validation_data=val, augmenter=augmenter, epochs=epochs, steps_per_epoch=steps)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    model.optimize_thresholds(tune[0], tune[1], **optimize, predict_kwargs={"show_tile_progress": False})
    return train_s, time.perf_counter() - t1

def matching_scores(s: Any, **extra: Any) -> dict[str, Any]:
    """Precision, recall, F1 and AP (TP/(TP+FP+FN)) of one StarDist matching result, then ``extra``, then object counts."""
    return {
        "precision@0.5": round(float(s.precision), 4),
        "recall@0.5": round(float(s.recall), 4),
        "f1@0.5": round(float(s.f1), 4),
        "ap@0.5": round(float(s.accuracy), 4),
        **extra,
        "n_true": int(s.n_true),
        "n_pred": int(s.n_pred),
    }


def finish_model_folder(tmp: Path, extras: tuple[str, ...]) -> dict[str, Any]:
    """Delete the training by-products ``extras`` from ``tmp``; return the tuned thresholds (``thresholds.json``)."""
    for extra in extras:
        p = tmp / extra
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return json.loads((tmp / "thresholds.json").read_text())


def manifest_header(name: str, version: str, description: str, dims: list[int], axes: list[str], tmp: Path,
                    thresholds: dict[str, Any]) -> dict[str, Any]:
    """The manifest keys common to the StarDist starters, up to and including ``defaults`` (in manifest order)."""
    from opsef_protocol.manifest import sha256_file

    return {
        "name": name,
        "version": version,
        "family": "stardist",
        "framework": "tensorflow",
        "source": "project",
        "description": description,
        "dims": dims,
        "axes": axes,
        "channels": 1,
        "min_size_px": 1,
        "weights": [{"path": f, "sha256": sha256_file(tmp / f)} for f in MODEL_FILES],
        "defaults": {
            "prob_threshold": round(float(thresholds["prob"]), 4),
            "nms_threshold": round(float(thresholds["nms"]), 4),
            "normalize": True,
            "norm_percentile_low": 1.0,
            "norm_percentile_high": 99.8,
        },
    }


def training_record(command: str, data: str, args: Any, patch_size: Any, train_s: float, tune_s: float,
                    tf_version: str) -> dict[str, Any]:
    """The manifest's ``training`` section (command, data, schedule, seed, timings, machine)."""
    return {
        "command": command,
        "data": data,
        "epochs": args.epochs,
        "steps_per_epoch": args.steps,
        "batch_size": args.batch,
        "patch_size": patch_size,
        "seed": args.seed,
        "train_seconds": round(train_s, 1),
        "threshold_tuning_seconds": round(tune_s, 1),
        "machine": f"{os.cpu_count()} CPU cores, TensorFlow {tf_version}",
    }


def write_model(tmp: Path, out: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.yaml`` into ``tmp``, then move ``tmp`` to ``out`` (replacing it)."""
    import yaml

    (tmp / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
