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
import sys
from pathlib import Path

import numpy as np

from opsef_stardist._training import (add_output_arguments, add_schedule_arguments, finish_model_folder, fit_and_tune,
                                      framework_env, fresh_temp_dir, manifest_header, matching_scores, output_folder,
                                      training_config, training_record, write_model)

__all__ = ["main", "build_parser", "evaluate_model"]

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m opsef_stardist.train", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="dsb2018 folder (index.json, train/, val/)")
    p.add_argument("--out", type=Path, required=True, help="model folder to write (its name is the model name)")
    add_schedule_arguments(p, epochs=80, steps=40, batch=8, patch={"default": 160}, rays=32, depth=4)
    p.add_argument("--holdout", type=int, default=5, help="train images held out for threshold tuning")
    add_output_arguments(p)
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
    return matching_scores(stats[0], **{"map@0.5:0.95": round(float(np.mean([s.accuracy for s in stats])), 4),
                                        "n_images": len(images)})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = output_folder(args)
    if out is None:
        return 2
    framework_env()

    from csbdeep.utils import normalize
    from stardist import fill_label_holes
    from stardist.models import Config2D, StarDist2D
    import tensorflow as tf

    from opsef_protocol.manifest import ModelManifest
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

    tmp = fresh_temp_dir(out)
    config = Config2D(
        n_rays=args.rays,
        grid=(2, 2),
        n_channel_in=1,
        **training_config(args, (args.patch, args.patch), patience=10),
    )
    model = StarDist2D(config, name=tmp.name, basedir=str(tmp.parent))
    train_s, tune_s = fit_and_tune(model, (X_fit, Y_fit), (X_tune, Y_tune), (X_tune, Y_tune),
                                   lambda x, y: _augment(x, y, rng), args.epochs, args.steps)

    _, val_images, val_masks, val_kinds = load_split(args.data, "val")
    X_val = [normalize(x, 1, 99.8) for x in val_images]
    val = evaluate_model(model, X_val, val_masks)
    fluo = [i for i, k in enumerate(val_kinds) if k == "fluo"]
    val_fluo = evaluate_model(model, [X_val[i] for i in fluo], [val_masks[i] for i in fluo])
    logger.info("val: %s", val)
    logger.info("val (fluorescence only): %s", val_fluo)

    thresholds = finish_model_folder(tmp, ("weights_last.h5", "logs"))
    n_params = int(model.keras_model.count_params())
    manifest = manifest_header(
        out.name, args.version,
        "OpSeF starter StarDist 2D nuclei model trained from scratch on DSB2018 stage-1 (train split), "
        "grey input, fluorescence and bright-field (intensity-inversion augmentation).",
        [2], ["YX", "YXC"], tmp, thresholds,
    ) | {
        "options": {"n_rays": args.rays, "grid": [2, 2], "unet_n_depth": args.depth, "unet_n_filter_base": args.filters, "parameters": n_params},
        "training": training_record(
            "python -m opsef_stardist.train --data ../shared/data/dsb2018 --out services/stardist/models/" + out.name
            + f" --epochs {args.epochs} --steps {args.steps} --seed {args.seed}",
            "DSB2018 stage-1 (BBBC038v1, CC0), split 'train' (35 images); thresholds tuned on a hold-out of "
            f"{args.holdout} train images; scored once on split 'val' (15 images)",
            args, args.patch, train_s, tune_s, tf.__version__,
        ),
        "metrics": {f"dsb2018_val/{k}": v for k, v in val.items() if isinstance(v, float)}
        | {f"dsb2018_val_fluo/{k}": v for k, v in val_fluo.items() if isinstance(v, float)},
    }
    ModelManifest.model_validate(manifest)  # fail before writing anything invalid
    write_model(tmp, out, manifest)
    sys.stdout.write(json.dumps({"model": out.name, "val": val, "val_fluo": val_fluo, "train_seconds": round(train_s, 1)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
