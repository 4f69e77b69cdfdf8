"""Train the OpSeF starter StarDist 3D model on synthetic nuclei volumes and score it on real volumes.

Usage::

    python -m opsef_stardist.train3d --out services/stardist/models/stardist_3d_starter

Training and threshold tuning use only synthetic volumes made by
:mod:`opsef_stardist.synthetic3d` (separate seeds). Real data is used once,
for the scores written into the manifest: StarDist's bundled ``img3d.tif`` /
``mask3d.tif`` at scale 1, and, when ``--fluo3d`` exists, the Fluo-N3DH-CHO
volumes at the recommended XY ``scale``. That scale is chosen on synthetic thin
stacks of large nuclei (~75 px wide, like the CHO nuclei), never on real data.
Scores go through :class:`~opsef_stardist.adapter.StarDistAdapter`, exactly as the
service predicts. Arguments are parsed before TensorFlow is imported.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from opsef_stardist._training import (add_output_arguments, add_schedule_arguments, finish_model_folder, fit_and_tune,
                                      framework_env, fresh_temp_dir, manifest_header, matching_scores, output_folder,
                                      training_config, training_record, write_model)

__all__ = ["main", "build_parser", "score_volumes", "bundled_volume", "tune_scale"]

logger = logging.getLogger(__name__)

#: XY diameter (px) of the large synthetic nuclei the recommended scale is tuned on (like the CHO nuclei).
LARGE_DIAMETER_XY = 75.0
#: Candidate XY scales for large nuclei.
SCALES = (0.1, 0.125, 0.15, 0.175, 0.2, 0.25)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m opsef_stardist.train3d", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="model folder to write (its name is the model name)")
    p.add_argument("--fluo3d", type=Path, default=Path(__file__).resolve().parents[4].parent / "shared" / "data" / "fluo3d",
                   help="folder with cho_t00/cho_t10 _img.tif/_labels.tif, scored if present")
    p.add_argument("--n-train", type=int, default=48, help="synthetic training volumes")
    p.add_argument("--n-holdout", type=int, default=8, help="synthetic volumes for validation")
    p.add_argument("--n-tune", type=int, default=4, help="of those, volumes used for threshold tuning")
    p.add_argument("--nms", type=float, nargs="+", default=[0.3, 0.4], help="NMS thresholds tried in threshold tuning")
    add_schedule_arguments(p, epochs=60, steps=30, batch=2, patch={"nargs": 3, "default": [16, 64, 64], "metavar": ("Z", "Y", "X")},
                           rays=64, depth=2)
    p.add_argument("--anisotropy", type=float, default=2.0, help="Z over XY voxel size the model assumes")
    p.add_argument("--scale", type=float, default=None,
                   help="recommended XY scale for ~75 px nuclei (default: tuned on synthetic large-nuclei stacks)")
    add_output_arguments(p)
    return p


def _augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Only XY symmetries: Z is the anisotropic axis.
    k = int(rng.integers(4))
    x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(1, 2))
    if rng.random() < 0.5:
        x, y = x[:, :, ::-1], y[:, :, ::-1]
    if rng.random() < 0.5:
        x, y = x[::-1], y[::-1]
    x = x * rng.uniform(0.7, 1.3) + rng.uniform(-0.1, 0.1)
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)


def bundled_volume() -> tuple[np.ndarray, np.ndarray]:
    """StarDist's bundled synthetic-nuclei volume ``img3d.tif`` (31x61x57) and its labels ``mask3d.tif``."""
    import stardist
    import tifffile

    folder = Path(stardist.__file__).parent / "data" / "images"
    return tifffile.imread(folder / "img3d.tif"), tifffile.imread(folder / "mask3d.tif")


def score_volumes(adapter: Any, volumes: list[np.ndarray], truths: list[np.ndarray], params: dict[str, Any]) -> dict[str, float]:
    """Precision, recall, F1, AP (TP/(TP+FP+FN)) at IoU 0.5 and object counts, predicting through ``adapter``."""
    from stardist.matching import matching_dataset

    preds = [adapter.predict(v, "ZYX", params) for v in volumes]
    return matching_scores(matching_dataset(truths, preds, thresh=0.5, show_progress=False))


def tune_scale(adapter: Any, params: dict[str, Any], seed: int, n: int = 6) -> tuple[float, dict[float, float]]:
    """The XY scale in :data:`SCALES` with the best F1@0.5 on ``n`` synthetic thin stacks of ~75 px nuclei."""
    from opsef_stardist.synthetic3d import synthetic_volume

    rng = np.random.default_rng(seed)
    r = LARGE_DIAMETER_XY / 2 / 0.94  # synthetic nuclei are ~0.94 of the drawn semi-axis on average
    vols = [synthetic_volume((8, 320, 320), rng, radius_xy=(0.9 * r, 1.1 * r), thin=True, min_z=1) for _ in range(n)]
    f1 = {}
    for s in SCALES:
        f1[s] = score_volumes(adapter, [v for v, _ in vols], [y for _, y in vols], params | {"scale": s})["f1@0.5"]
        logger.info("synthetic ~%g px nuclei at scale %g: F1@0.5 %.3f", LARGE_DIAMETER_XY, s, f1[s])
    return max(SCALES, key=lambda s: (f1[s], -abs(s - 0.2))), f1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = output_folder(args)
    if out is None:
        return 2
    if args.scale is not None and not 0.05 <= args.scale <= 1.0:
        sys.stderr.write(f"--scale must be in [0.05, 1], got {args.scale}\n")
        return 2
    framework_env()

    from csbdeep.utils import normalize
    from stardist import Rays_GoldenSpiral
    from stardist.models import Config3D, StarDist3D
    import tensorflow as tf

    from opsef_protocol.adapter import RuntimeOptions
    from opsef_protocol.manifest import ModelManifest
    from opsef_stardist.adapter import StarDistAdapter
    from opsef_stardist.synthetic3d import synthetic_dataset

    rng = np.random.default_rng(args.seed)
    tf.random.set_seed(args.seed)
    patch = tuple(args.patch)
    t_data = time.perf_counter()
    X_fit, Y_fit = synthetic_dataset(args.n_train, seed=args.seed, min_z=patch[0])
    X_tune, Y_tune = synthetic_dataset(args.n_holdout, seed=args.seed + 1000, min_z=patch[0])
    X_fit = [normalize(x, 1, 99.8) for x in X_fit]
    X_tune = [normalize(x, 1, 99.8) for x in X_tune]
    logger.info("synthetic data: %d + %d volumes, %d nuclei, %.1f s", len(X_fit), len(X_tune),
                sum(int(y.max()) for y in Y_fit), time.perf_counter() - t_data)

    tmp = fresh_temp_dir(out)
    anisotropy = (args.anisotropy, 1.0, 1.0)
    config = Config3D(
        rays=Rays_GoldenSpiral(args.rays, anisotropy=anisotropy),
        anisotropy=anisotropy,
        grid=(1, 2, 2),
        n_channel_in=1,
        backbone="unet",
        **training_config(args, patch, patience=6),
    )
    model = StarDist3D(config, name=tmp.name, basedir=str(tmp.parent))
    n_params = int(model.keras_model.count_params())
    logger.info("StarDist3D: %d parameters", n_params)
    train_s, tune_s = fit_and_tune(model, (X_fit, Y_fit), (X_tune, Y_tune), (X_tune[: args.n_tune], Y_tune[: args.n_tune]),
                                   lambda x, y: _augment(x, y, rng), args.epochs, args.steps, nms_threshs=list(args.nms))

    thresholds = finish_model_folder(tmp, ("weights_last.h5", "weights_now.h5", "logs"))
    command = (f"python -m opsef_stardist.train3d --out services/stardist/models/{out.name} --n-train {args.n_train} "
               f"--epochs {args.epochs} --steps {args.steps} --seed {args.seed}")
    if args.scale is not None:
        command += f" --scale {args.scale}"
    manifest: dict[str, Any] = manifest_header(
        out.name, args.version,
        "OpSeF starter StarDist 3D nuclei model trained from scratch on synthetic volumes made by the "
        "project (opsef_stardist.synthetic3d: touching ellipsoidal nuclei ~8-22 px wide in XY, flatter in Z, "
        "blur, noise, texture; no real data). Grey ZYX input with Z spacing about twice the XY spacing. "
        "Small nuclei (~8-22 px wide) at scale 1; for larger nuclei set 'scale' = SCALE * 75 / nucleus XY "
        "diameter in px, SCALE being options.recommended_scale_75px (tuned on synthetic thin stacks of ~75 px "
        "nuclei; for the CHO volumes in fluo3d use it as is).",
        [3], ["ZYX"], tmp, thresholds,
    ) | {
        "options": {
            "n_rays": args.rays,
            "grid": [1, 2, 2],
            "anisotropy": list(anisotropy),
            "unet_n_depth": args.depth,
            "unet_n_filter_base": args.filters,
            "parameters": n_params,
            "recommended_scale_75px": None,
        },
        "training": training_record(
            command,
            f"synthetic 3D nuclei made by the project (opsef_stardist.synthetic3d, seed {args.seed}): "
            f"{args.n_train} volumes of 32x96x96 (a quarter of them 4-8-plane stacks edge-padded to {patch[0]} planes); "
            f"validation on {args.n_holdout} more synthetic volumes (seed {args.seed + 1000}), thresholds tuned on "
            f"{args.n_tune} of them; scale for ~75 px nuclei tuned on 6 synthetic thin stacks (seed {args.seed + 2000}); "
            "scored once on stardist's bundled img3d.tif/mask3d.tif (scale 1) and on fluo3d cho_t00/cho_t10 "
            "(automatic labels, at the recommended scale)",
            args, list(patch), train_s, tune_s, tf.__version__,
        ),
    }
    parsed = ModelManifest.model_validate(manifest)  # fail before writing anything invalid

    # Score through the adapter, as the service predicts (padding, normalisation, scale).
    adapter = StarDistAdapter(parsed, tmp, RuntimeOptions(device="cpu"))
    adapter.model = model
    defaults = dict(parsed.defaults)
    t2 = time.perf_counter()
    if args.scale is None:
        scale, scale_f1 = tune_scale(adapter, defaults, seed=args.seed + 2000)
        manifest["training"]["scale_tuning_f1"] = {str(k): v for k, v in scale_f1.items()}
    else:
        scale = args.scale
    manifest["training"]["scale_tuning_seconds"] = round(time.perf_counter() - t2, 1)
    manifest["options"]["recommended_scale_75px"] = scale
    img3d, mask3d = bundled_volume()
    results: dict[str, dict[str, float]] = {"img3d": score_volumes(adapter, [img3d], [mask3d], defaults)}
    if (args.fluo3d / "cho_t00_img.tif").is_file():
        import tifffile

        for t in ("t00", "t10"):
            vol = tifffile.imread(args.fluo3d / f"cho_{t}_img.tif")
            lab = tifffile.imread(args.fluo3d / f"cho_{t}_labels.tif")
            results[f"fluo3d_{t}"] = score_volumes(adapter, [vol], [lab], defaults | {"scale": scale})
    else:
        logger.warning("%s not found: fluo3d not scored", args.fluo3d)
    for k, v in results.items():
        logger.info("%s: %s", k, v)
    manifest["metrics"] = {f"{name}/{k}": v for name, r in results.items() for k, v in r.items()
                           if name == "img3d" or k in ("f1@0.5", "n_true", "n_pred")}
    ModelManifest.model_validate(manifest)
    write_model(tmp, out, manifest)
    sys.stdout.write(json.dumps({"model": out.name, "scores": results, "thresholds": thresholds, "scale": scale,
                                 "train_seconds": round(train_s, 1)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
