"""Train the OpSeF starter StarDist 2D model on ``dsb2018/train`` and score it on ``dsb2018/val``.

Usage::

    python -m opsef_stardist.train --data ../shared/data/dsb2018 \\
        --out services/stardist/models/stardist_dsb2018_starter

Only ``train/`` is used for fitting; thresholds are tuned on a hold-out of
``train/``; ``val/`` is used once, for the scores written into the manifest.
Arguments are parsed before TensorFlow is imported.
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

import numpy as np

__all__ = ["main", "build_parser", "evaluate_model"]

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m opsef_stardist.train", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="dsb2018 folder (index.json, train/, val/)")
    p.add_argument("--out", type=Path, required=True, help="model folder to write (its name is the model name)")
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--steps", type=int, default=40, help="steps per epoch")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=160)
    p.add_argument("--rays", type=int, default=32)
    p.add_argument("--depth", type=int, default=4, help="U-Net depth")
    p.add_argument("--filters", type=int, default=16, help="U-Net base filters")
    p.add_argument("--holdout", type=int, default=5, help="train images held out for threshold tuning")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--force", action="store_true", help="replace an existing model folder")
    return p


def _augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    k = int(rng.integers(4))
    x, y = np.rot90(x, k), np.rot90(y, k)
    if rng.random() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    # Intensity: contrast/brightness jitter, and inversion so that bright-field
    # (dark nuclei) and fluorescence (bright nuclei) are both learned.
    x = x * rng.uniform(0.7, 1.3) + rng.uniform(-0.1, 0.1)
    if rng.random() < 0.3:
        x = 1.0 - x
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)


def evaluate_model(model, images: list[np.ndarray], masks: list[np.ndarray], prob: float | None = None, nms: float | None = None) -> dict[str, float]:
    """Precision, recall, F1 and AP (TP/(TP+FP+FN)) at IoU 0.5, and mean AP over IoU 0.5:0.95."""
    from stardist.matching import matching_dataset

    preds = [model.predict_instances(x, prob_thresh=prob, nms_thresh=nms, verbose=False, show_tile_progress=False)[0] for x in images]
    thresholds = np.round(np.arange(0.5, 1.0, 0.05), 2)
    stats = matching_dataset(masks, preds, thresh=list(thresholds), show_progress=False)
    s50 = stats[0]
    return {
        "precision@0.5": round(float(s50.precision), 4),
        "recall@0.5": round(float(s50.recall), 4),
        "f1@0.5": round(float(s50.f1), 4),
        "ap@0.5": round(float(s50.accuracy), 4),
        "map@0.5:0.95": round(float(np.mean([s.accuracy for s in stats])), 4),
        "n_images": len(images),
        "n_true": int(s50.n_true),
        "n_pred": int(s50.n_pred),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = args.out.resolve()
    if out.exists() and not args.force:
        sys.stderr.write(f"{out} exists; pass --force to replace it\n")
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_HOME", str(Path(os.environ.get("OPSEF_CACHE", Path.home() / ".cache" / "opsef")) / "frameworks" / "stardist" / "keras"))

    from csbdeep.utils import normalize
    from stardist import fill_label_holes
    from stardist.models import Config2D, StarDist2D
    import tensorflow as tf

    from opsef_protocol.manifest import ModelManifest, sha256_file
    from opsef_stardist.data import load_split

    rng = np.random.default_rng(args.seed)
    tf.random.set_seed(args.seed)
    ids, images, masks, kinds = load_split(args.data, "train")
    X = [normalize(x, 1, 99.8) for x in images]
    Y = [fill_label_holes(y) for y in masks]
    order = rng.permutation(len(X))
    tune_idx, fit_idx = order[: args.holdout], order[args.holdout :]
    X_fit, Y_fit = [X[i] for i in fit_idx], [Y[i] for i in fit_idx]
    X_tune, Y_tune = [X[i] for i in tune_idx], [Y[i] for i in tune_idx]

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    config = Config2D(
        n_rays=args.rays,
        grid=(2, 2),
        n_channel_in=1,
        unet_n_depth=args.depth,
        unet_n_filter_base=args.filters,
        train_patch_size=(args.patch, args.patch),
        train_batch_size=args.batch,
        train_epochs=args.epochs,
        train_steps_per_epoch=args.steps,
        train_tensorboard=False,
        train_reduce_lr={"factor": 0.5, "patience": 10, "min_delta": 0},
    )
    model = StarDist2D(config, name=tmp.name, basedir=str(tmp.parent))
    t0 = time.perf_counter()
    model.train(X_fit, Y_fit, validation_data=(X_tune, Y_tune), augmenter=lambda x, y: _augment(x, y, rng), epochs=args.epochs, steps_per_epoch=args.steps)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    model.optimize_thresholds(X_tune, Y_tune, predict_kwargs={"show_tile_progress": False})
    tune_s = time.perf_counter() - t1

    _, val_images, val_masks, val_kinds = load_split(args.data, "val")
    X_val = [normalize(x, 1, 99.8) for x in val_images]
    val = evaluate_model(model, X_val, val_masks)
    fluo = [i for i, k in enumerate(val_kinds) if k == "fluo"]
    val_fluo = evaluate_model(model, [X_val[i] for i in fluo], [val_masks[i] for i in fluo])
    logger.info("val: %s", val)
    logger.info("val (fluorescence only): %s", val_fluo)

    for extra in ("weights_last.h5", "logs"):
        p = tmp / extra
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    files = ["config.json", "thresholds.json", "weights_best.h5"]
    thresholds = json.loads((tmp / "thresholds.json").read_text())
    n_params = int(model.keras_model.count_params())
    manifest = {
        "name": out.name,
        "version": args.version,
        "family": "stardist",
        "framework": "tensorflow",
        "source": "project",
        "description": "OpSeF starter StarDist 2D nuclei model trained from scratch on DSB2018 stage-1 (train split), "
        "grey input, fluorescence and bright-field (intensity-inversion augmentation).",
        "dims": [2],
        "axes": ["YX", "YXC"],
        "channels": 1,
        "min_size_px": 1,
        "weights": [{"path": f, "sha256": sha256_file(tmp / f)} for f in files],
        "defaults": {
            "prob_threshold": round(float(thresholds["prob"]), 4),
            "nms_threshold": round(float(thresholds["nms"]), 4),
            "normalize": True,
            "norm_percentile_low": 1.0,
            "norm_percentile_high": 99.8,
        },
        "options": {"n_rays": args.rays, "grid": [2, 2], "unet_n_depth": args.depth, "unet_n_filter_base": args.filters, "parameters": n_params},
        "training": {
            "command": "python -m opsef_stardist.train --data ../shared/data/dsb2018 --out services/stardist/models/" + out.name
            + f" --epochs {args.epochs} --steps {args.steps} --seed {args.seed}",
            "data": "DSB2018 stage-1 (BBBC038v1, CC0), split 'train' (35 images); thresholds tuned on a hold-out of "
            f"{args.holdout} train images; scored once on split 'val' (15 images)",
            "epochs": args.epochs,
            "steps_per_epoch": args.steps,
            "batch_size": args.batch,
            "patch_size": args.patch,
            "seed": args.seed,
            "train_seconds": round(train_s, 1),
            "threshold_tuning_seconds": round(tune_s, 1),
            "machine": f"{os.cpu_count()} CPU cores, TensorFlow {tf.__version__}",
        },
        "metrics": {f"dsb2018_val/{k}": v for k, v in val.items() if isinstance(v, float)}
        | {f"dsb2018_val_fluo/{k}": v for k, v in val_fluo.items() if isinstance(v, float)},
    }
    ModelManifest.model_validate(manifest)  # fail before writing anything invalid
    import yaml

    (tmp / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    sys.stdout.write(json.dumps({"model": out.name, "val": val, "val_fluo": val_fluo, "train_seconds": round(train_s, 1)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
