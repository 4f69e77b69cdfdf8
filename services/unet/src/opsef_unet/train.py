"""Train the starter U-Net on DSB 2018 and write a complete model folder.

Usage::

    python -m opsef_unet.train --data ../shared/data/dsb2018 \\
        --out services/unet/models/unet_dsb2018_starter [--epochs 20]

Trains on ``dsb2018/train`` only (minus a small hold-out used to pick the best
epoch and to tune the object-step defaults), then reports precision, recall,
F1 and AP (TP/(TP+FP+FN)) at IoU 0.5 on ``dsb2018/val`` (never used for any
choice), and writes ``unet.weights.h5``, ``config.json`` and ``manifest.yaml``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from opsef_unet import __version__
from opsef_unet.config import CONFIG_FILE, NetworkConfig, save_config
from opsef_unet.data import CropSampler, Sample, load_split, make_targets, network_input
from opsef_unet.metrics import dataset_scores
from opsef_unet.pipeline import DEFAULT_OPTIONS, DEFAULT_PARAMS, labels_from_probabilities
from opsef_unet.processing import predict_tiled

__all__ = ["main", "build_parser", "WEIGHTS_FILE"]

logger = logging.getLogger(__name__)

#: Weight file name inside the model folder (Keras weights format).
WEIGHTS_FILE = "unet.weights.h5"

#: Object-step grid searched on the train hold-out.
_GRID: dict[str, list[Any]] = {
    "foreground_threshold": [0.3, 0.4, 0.5, 0.6, 0.7],
    "boundary_weight": [0.5, 1.0],
    "distance_threshold": [0.0, 1.0, 2.0],
    "min_size": [0, 15, 30],
    "seed": [("components", 3), ("peaks", 5)],
    "smooth_sigma": [0.0, 1.0, 2.0],
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m opsef_unet.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path, help="the dsb2018 folder (index.json, train/, val/)")
    p.add_argument("--out", required=True, type=Path, help="model folder to write; its name is the model name")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps-per-epoch", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=128, help="training crop size (multiple of 2**depth)")
    p.add_argument("--lr", type=float, default=1e-3, help="initial learning rate (cosine decay)")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--base-filters", type=int, default=12)
    p.add_argument("--boundary-px", type=int, default=2, help="boundary class thickness inside each nucleus")
    p.add_argument("--class-weights", default="1,1,5", help="loss weights of background,interior,boundary")
    p.add_argument("--holdout", type=int, default=4, help="train images held out for epoch choice and object-step tuning")
    p.add_argument("--tile-size", type=int, default=256, help="inference tile size written to the manifest")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="TensorFlow CPU threads (0 = default)")
    p.add_argument("--version", default="1", help="model version written to the manifest")
    p.add_argument("--tune-only", action="store_true",
                   help="keep the weights in --out: only re-tune the object step on the hold-out, re-evaluate on val "
                        "and rewrite the manifest (its training record is kept)")
    p.add_argument("--log-level", default="INFO")
    return p


def _split_holdout(samples: list[Sample], n: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``n`` train images (at least one of each kind when n >= 2), reproducibly."""
    rng = np.random.default_rng(seed)
    kinds = sorted({s.kind for s in samples})
    chosen: list[int] = []
    for kind in kinds if n >= len(kinds) else []:
        idx = [i for i, s in enumerate(samples) if s.kind == kind]
        chosen.append(int(rng.choice(idx)))
    rest = [i for i in range(len(samples)) if i not in chosen]
    chosen += [int(i) for i in rng.choice(rest, size=max(0, n - len(chosen)), replace=False)]
    hold = [samples[i] for i in sorted(chosen)]
    train = [s for i, s in enumerate(samples) if i not in chosen]
    return train, hold


def _weighted_loss(class_weights: Sequence[float]) -> Any:
    import tensorflow as tf

    weights = tf.constant(list(class_weights), tf.float32)

    def loss(y_true: Any, y_pred: Any) -> Any:
        y = tf.cast(tf.reshape(y_true, tf.shape(y_pred)[:-1]), tf.int32)
        ce = tf.keras.losses.sparse_categorical_crossentropy(y, y_pred)
        w = tf.gather(weights, y)
        return tf.reduce_mean(ce * w, axis=[1, 2])

    return loss


def _probabilities(model: Any, samples: list[Sample], tile: int, overlap: int) -> list[np.ndarray]:
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False),
                     input_signature=[tf.TensorSpec([None, tile, tile, 1], tf.float32)])
    return [predict_tiled(lambda b: fn(tf.constant(b)).numpy(), network_input(s), tile, overlap) for s in samples]


def _tune(probs: list[np.ndarray], samples: list[Sample]) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Grid-search the object step on the hold-out; returns (params, options, F1)."""
    from opsef_unet.objects import remove_small_objects

    best: tuple[float, dict[str, Any], dict[str, Any]] = (-1.0, {}, {})
    keys = [k for k in _GRID if k != "min_size"]
    for values in itertools.product(*(_GRID[k] for k in keys)):
        combo = dict(zip(keys, values))
        mode, min_distance = combo.pop("seed")
        options = {**DEFAULT_OPTIONS, "seed_mode": mode, "min_distance": min_distance,
                   "smooth_sigma": combo.pop("smooth_sigma")}
        params = {**DEFAULT_PARAMS, **combo, "min_size": 0}
        raw = [labels_from_probabilities(p, s.mask.shape, params, options) for p, s in zip(probs, samples)]
        for min_size in _GRID["min_size"]:
            f1 = dataset_scores((s.mask, remove_small_objects(r, min_size)) for s, r in zip(samples, raw))["f1"]
            if f1 > best[0] + 1e-9:
                best = (f1, {**params, "min_size": min_size}, options)
    logger.info("hold-out tuning: best F1 %.4f with %s %s", best[0],
                {k: best[1][k] for k in _GRID if k not in ("seed", "smooth_sigma")},
                {k: best[2][k] for k in ("seed_mode", "min_distance", "smooth_sigma")})
    return best[1], best[2], best[0]


def _evaluate(probs: list[np.ndarray], samples: list[Sample], params: dict[str, Any],
              options: dict[str, Any]) -> dict[str, dict[str, float]]:
    preds = [labels_from_probabilities(p, s.mask.shape, params, options) for p, s in zip(probs, samples)]
    out = {"all": dataset_scores((s.mask, q) for s, q in zip(samples, preds))}
    for kind in sorted({s.kind for s in samples}):
        out[kind] = dataset_scores((s.mask, q) for s, q in zip(samples, preds) if s.kind == kind)
    return out


def _load_trained(out: Path, config: NetworkConfig, hold: list[Sample]) -> tuple[Any, dict[str, Any]]:
    """The network and manifest already in ``out`` (for --tune-only); the hold-out must be the one it was trained with."""
    import yaml

    from opsef_unet.config import load_config
    from opsef_unet.network import build_unet

    prev = yaml.safe_load((out / "manifest.yaml").read_text(encoding="utf-8"))
    if sorted(prev["training"]["holdout"]) != sorted(s.id for s in hold):
        raise SystemExit("--tune-only: the hold-out differs from the one the model was trained with (--holdout/--seed)")
    stored = load_config(out / CONFIG_FILE)
    if stored != config:
        raise SystemExit(f"--tune-only: --depth/--base-filters differ from {out / CONFIG_FILE} ({stored})")
    model = build_unet(stored)
    model.load_weights(str(out / WEIGHTS_FILE))
    return model, prev


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    import yaml

    from opsef_protocol.manifest import load_manifest

    path = out / "manifest.yaml"
    tmp = out / ".manifest.yaml.tmp"
    tmp.write_text("# Written by `python -m opsef_unet.train`; see the training section.\n"
                   + yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)
    load_manifest(out)  # validates (schema, name == folder name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t_start = time.time()
    out = args.out.resolve()
    name = out.name
    class_weights = [float(v) for v in args.class_weights.split(",")]
    if len(class_weights) != 3:
        raise SystemExit("--class-weights needs three numbers: background,interior,boundary")
    config = NetworkConfig(depth=args.depth, base_filters=args.base_filters)
    if args.crop % config.multiple or args.tile_size % config.multiple:
        raise SystemExit(f"--crop and --tile-size must be multiples of {config.multiple} (2**depth)")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if args.threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, args.threads // 2))
    tf.keras.utils.set_random_seed(args.seed)
    from opsef_unet.network import build_unet

    # -- data: dsb2018/train only ---------------------------------------------------------------------------------
    samples = load_split(args.data, "train")
    train, hold = _split_holdout(samples, args.holdout, args.seed)
    logger.info("training on %d images, hold-out %d (%s)", len(train), len(hold), ", ".join(s.id[:8] for s in hold))
    sampler = CropSampler([network_input(s) for s in train], [make_targets(s.mask, args.boundary_px) for s in train],
                          crop=args.crop, seed=args.seed)
    hold_sampler = CropSampler([network_input(s) for s in hold], [make_targets(s.mask, args.boundary_px) for s in hold],
                               crop=args.crop, seed=args.seed + 1)
    val_x, val_y = hold_sampler.batch(64, augment=False)

    prev: dict[str, Any] = {}
    if args.tune_only:
        model, prev = _load_trained(out, config, hold)
        train_s, best_epoch = float(prev["training"]["train_time_s"]), int(prev["training"]["best_epoch"])
        weights_path = out / WEIGHTS_FILE
    else:
        class Batches(tf.keras.utils.Sequence):
            def __len__(self) -> int:
                return args.steps_per_epoch

            def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
                return sampler.batch(args.batch_size)

        # -- model ----------------------------------------------------------------------------------------------------
        model = build_unet(config)
        total_steps = args.epochs * args.steps_per_epoch
        schedule = tf.keras.optimizers.schedules.CosineDecay(args.lr, total_steps, alpha=0.02)
        model.compile(optimizer=tf.keras.optimizers.Adam(schedule), loss=_weighted_loss(class_weights))
        out.mkdir(parents=True, exist_ok=True)
        best_path = out / f".best.{os.getpid()}.weights.h5"
        callbacks = [tf.keras.callbacks.ModelCheckpoint(str(best_path), monitor="val_loss", save_best_only=True,
                                                        save_weights_only=True)]
        logger.info("U-Net depth %d, base filters %d: %d parameters; %d epochs x %d steps x batch %d of %dx%d crops",
                    config.depth, config.base_filters, model.count_params(), args.epochs, args.steps_per_epoch,
                    args.batch_size, args.crop, args.crop)
        t0 = time.time()
        history = model.fit(Batches(), epochs=args.epochs, validation_data=(val_x, val_y), callbacks=callbacks,
                            verbose=2, shuffle=False)
        train_s = time.time() - t0
        val_losses = history.history["val_loss"]
        best_epoch = int(np.argmin(val_losses)) + 1
        model.load_weights(str(best_path))
        best_path.unlink()
        logger.info("trained in %.0f s; best hold-out loss %.4f at epoch %d", train_s, min(val_losses), best_epoch)

        weights_path = out / WEIGHTS_FILE
        # A fresh copy of the network: the weights file then holds no optimizer state.
        clean = build_unet(config)
        clean.set_weights(model.get_weights())
        clean.save_weights(str(weights_path))
        save_config(config, out / CONFIG_FILE)

    # -- object-step defaults: tuned on the train hold-out ----------------------------------------------------------
    tile, overlap = args.tile_size, DEFAULT_OPTIONS["tile_overlap"]
    params, options, hold_f1 = _tune(_probabilities(model, hold, tile, overlap), hold)
    options = {**options, "tile_size": tile}

    # -- report on dsb2018/val (no choices made here) ---------------------------------------------------------------
    val = load_split(args.data, "val")
    t1 = time.time()
    val_probs = _probabilities(model, val, tile, overlap)
    report = _evaluate(val_probs, val, params, options)
    eval_s = time.time() - t1
    for kind, sc in report.items():
        logger.info("dsb2018/val %-4s precision %.3f recall %.3f F1 %.3f AP %.3f (TP %d FP %d FN %d)", kind,
                    sc["precision"], sc["recall"], sc["f1"], sc["ap"], sc["tp"], sc["fp"], sc["fn"])

    from opsef_protocol.manifest import sha256_file

    allv = report["all"]
    defaults = {k: params[k] for k in ("boundary_weight", "foreground_threshold", "distance_threshold", "min_size",
                                       "scale", "normalize", "norm_percentile_low", "norm_percentile_high")}
    command = "python -m opsef_unet.train " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    manifest = {
        "schema_version": 1,
        "name": name,
        "version": args.version,
        "family": "unet",
        "framework": "tensorflow",
        "source": "project",
        "description": ("CellProfiler 3.0 style 3-class U-Net (background / nucleus interior / boundary), "
                        "grey input, trained by OpSeF on DSB 2018 stage-1 test images (train split)"),
        "dims": [2],
        "axes": ["YX", "YXC"],
        "channels": 1,
        "min_size_px": 1,
        "weights": [
            {"path": WEIGHTS_FILE, "sha256": sha256_file(weights_path)},
            {"path": CONFIG_FILE, "sha256": sha256_file(out / CONFIG_FILE)},
        ],
        "defaults": defaults,
        "options": {
            "config": CONFIG_FILE,
            "weights": WEIGHTS_FILE,
            "color": "mean",
            "tile_size": options["tile_size"],
            "tile_overlap": options["tile_overlap"],
            "tile_batch": options["tile_batch"],
            "seed_mode": options["seed_mode"],
            "min_distance": options["min_distance"],
            "smooth_sigma": options["smooth_sigma"],
        },
        "training": {
            "command": command,
            "data": "dsb2018/train (BBBC038v1 stage-1 test, CC0), minus the hold-out; reported on dsb2018/val",
            "holdout": [s.id for s in hold],
            "holdout_use": "best epoch (weighted loss on crops) and object-step defaults (F1@0.5 grid search)",
            "holdout_f1@0.5": round(hold_f1, 4),
            "train_images": len(train),
            "epochs": args.epochs,
            "best_epoch": best_epoch,
            "steps_per_epoch": args.steps_per_epoch,
            "batch_size": args.batch_size,
            "crop": args.crop,
            "augmentation": "random crops, flips, rot90, intensity scale 0.8-1.2 and offset +-0.1",
            "loss": f"class-weighted cross-entropy, weights {class_weights} (background, interior, boundary)",
            "targets": f"boundary = object pixels within {args.boundary_px} px of another label",
            "optimizer": f"Adam, cosine decay from {args.lr:g}",
            "normalization": "grey (RGB mean), percentile 1 / 99.8",
            "seed": args.seed,
            "parameters": int(model.count_params()),
            "weights_bytes": weights_path.stat().st_size,
            "train_time_s": round(train_s, 1),
            "total_time_s": round(time.time() - t_start, 1),
            "val_eval_time_s": round(eval_s, 1),
            "machine": f"{os.cpu_count()} CPU cores, {tf.config.list_physical_devices('GPU') and 'GPU' or 'no GPU'}",
            "tensorflow": tf.__version__,
            "opsef_unet": __version__,
            "date": _dt.date.today().isoformat(),
            "val_by_kind": {k: {m: round(float(v[m]), 4) if isinstance(v[m], float) else int(v[m])
                                for m in ("precision", "recall", "f1", "ap", "tp", "fp", "fn")}
                            for k, v in report.items()},
        },
        "metrics": {
            "dsb2018_val/precision@0.5": round(float(allv["precision"]), 4),
            "dsb2018_val/recall@0.5": round(float(allv["recall"]), 4),
            "dsb2018_val/f1@0.5": round(float(allv["f1"]), 4),
            "dsb2018_val/ap@0.5": round(float(allv["ap"]), 4),
        },
    }
    if args.tune_only:
        kept = dict(prev["training"])
        for key in ("holdout_f1@0.5", "holdout_use", "val_eval_time_s", "val_by_kind"):
            kept[key] = manifest["training"][key]
        kept["retuned"] = {"command": command, "date": _dt.date.today().isoformat(),
                           "time_s": round(time.time() - t_start, 1)}
        manifest["training"] = kept
    _write_manifest(out, manifest)
    logger.info("wrote %s (%d bytes of weights) in %.0f s total", out, weights_path.stat().st_size,
                time.time() - t_start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
