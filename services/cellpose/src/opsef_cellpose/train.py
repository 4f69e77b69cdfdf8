"""Train the Cellpose starter model from scratch on dsb2018/train; evaluate on dsb2018/val.

Usage::

    python -m opsef_cellpose.train --data ../shared/data/dsb2018 \\
        --out services/cellpose/models/cellpose_dsb2018_starter [--epochs 200]

Images: every image becomes one grey plane (the mean of its RGB channels;
fluorescence images are grey stored as RGB, H&E images become grey with dark
nuclei on a bright background, not inverted). The network gets Cellpose's usual
two input channels, [grey, zeros], i.e. ``channels [0, 0]``. Training uses
``cellpose.train.train_seg`` on a CPnet of width ``--nbase`` at the images'
own scale (no per-image rescaling to a common diameter; random resizing by
0.5..1.5 as augmentation), so ``scale 1`` fits nuclei of the sizes in dsb2018.

At inference the manifest sets ``options.invert: auto``: bright-background
images (H&E) are inverted before the network, which learned bright nuclei.

The model folder gets the weights (float16 state dict, loads back through
CPnet.load_model), ``manifest.yaml`` with the training settings, and metrics on
dsb2018/val (TP/FP/FN pooled over all val images, IoU >= 0.5 one-to-one
matching; AP = TP / (TP + FP + FN)).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["load_split", "to_grey", "match_counts", "evaluate", "main"]

logger = logging.getLogger(__name__)

MODEL_NAME = "cellpose_dsb2018_starter"
WEIGHTS_FILE = "cpnet_dsb2018.pth"


# -- data -----------------------------------------------------------------
def to_grey(image: np.ndarray) -> np.ndarray:
    """Grey float32 plane of an image (mean of the first three channels; alpha dropped)."""
    img = np.asarray(image)
    if img.ndim == 3:
        img = img[..., : min(img.shape[-1], 3)].astype(np.float32).mean(axis=-1)
    return img.astype(np.float32)


def load_split(data: Path, split: str) -> list[dict[str, Any]]:
    """The images of one dsb2018 split: ``[{id, kind, image (uint8, Y X [C]), labels (Y X)}]``."""
    import tifffile
    import cv2

    index = json.loads((data / "index.json").read_text())
    out = []
    for key in sorted(k for k, v in index.items() if v["split"] == split):
        img = cv2.imread(str(data / split / "images" / f"{key}.png"), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise FileNotFoundError(data / split / "images" / f"{key}.png")
        if img.ndim == 3:  # OpenCV reads BGR(A)
            img = img[..., [2, 1, 0]] if img.shape[-1] >= 3 else img
        labels = tifffile.imread(data / split / "masks" / f"{key}.tif")
        out.append({"id": key, "kind": index[key]["kind"], "image": img, "labels": labels})
    return out


# -- metrics --------------------------------------------------------------
def match_counts(gt: np.ndarray, pred: np.ndarray, thresh: float = 0.5) -> tuple[int, int, int]:
    """(TP, FP, FN) of a one-to-one IoU matching of two label images at IoU >= ``thresh``.

    Examples
    --------
    >>> a = np.zeros((4, 4), int); a[:2, :2] = 1; a[2:, 2:] = 2
    >>> b = np.zeros((4, 4), int); b[:2, :2] = 5; b[3:, :1] = 7
    >>> match_counts(a, b)
    (1, 1, 1)
    """
    from scipy.optimize import linear_sum_assignment

    gt = np.asarray(gt).ravel()
    pred = np.asarray(pred).ravel()
    g_ids, g_inv = np.unique(gt, return_inverse=True)
    p_ids, p_inv = np.unique(pred, return_inverse=True)
    ng, npred = len(g_ids), len(p_ids)
    overlap = np.zeros((ng, npred), np.int64)
    np.add.at(overlap, (g_inv, p_inv), 1)
    g_area, p_area = overlap.sum(1), overlap.sum(0)
    gk, pk = g_ids != 0, p_ids != 0
    inter = overlap[np.ix_(gk, pk)].astype(np.float64)
    n_gt, n_pred = int(gk.sum()), int(pk.sum())
    if n_gt == 0 or n_pred == 0:
        return 0, n_pred, n_gt
    union = g_area[gk][:, None] + p_area[pk][None, :] - inter
    iou = inter / np.maximum(union, 1)
    if thresh >= 0.5:  # matches above 0.5 IoU are unique
        tp = int((iou >= thresh).sum())
    else:
        rows, cols = linear_sum_assignment(-iou)
        tp = int((iou[rows, cols] >= thresh).sum())
    return tp, n_pred - tp, n_gt - tp


def _scores(tp: int, fp: int, fn: int) -> dict[str, float]:
    return {
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(tp + fn, 1),
        "f1": 2 * tp / max(2 * tp + fp + fn, 1),
        "ap": tp / max(tp + fp + fn, 1),
    }


def evaluate(items: list[dict[str, Any]], segment: Callable[[np.ndarray], np.ndarray], thresh: float = 0.5) -> dict[str, Any]:
    """Segment each item's image and pool TP/FP/FN; scores overall and per kind."""
    counts: dict[str, list[int]] = {}
    per_image = []
    for item in items:
        labels = segment(item["image"])
        tp, fp, fn = match_counts(item["labels"], labels, thresh)
        per_image.append({"id": item["id"][:12], "kind": item["kind"], "tp": tp, "fp": fp, "fn": fn, **_scores(tp, fp, fn)})
        for key in ("all", item["kind"]):
            c = counts.setdefault(key, [0, 0, 0])
            c[0] += tp
            c[1] += fp
            c[2] += fn
    return {"pooled": {k: {"tp": c[0], "fp": c[1], "fn": c[2], **_scores(*c)} for k, c in counts.items()}, "images": per_image}


# -- training -------------------------------------------------------------
def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m opsef_cellpose.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="dsb2018 folder (index.json, train/, val/)")
    p.add_argument("--out", type=Path, required=True, help=f"model folder to write (its name is the model name, e.g. {MODEL_NAME})")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--nbase", default="16,32,64,128", help="CPnet widths of its 4 levels (Cellpose default 32,64,128,256)")
    p.add_argument("--bsize", type=int, default=128, help="training crop size (pixels)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--nimg-per-epoch", type=int, default=48, help="crops per epoch (images drawn at random)")
    p.add_argument("--learning-rate", type=float, default=0.005)
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch default; 1 is fastest on a busy 2-core machine)")
    p.add_argument("--eval-only", action="store_true", help="skip training; evaluate the weights already in --out")
    return p.parse_args(argv)


def _write_manifest(out: Path, data: dict[str, Any]) -> None:
    import yaml

    from opsef_protocol.manifest import load_manifest

    path = out / "manifest.yaml"
    path.write_text("# Written by python -m opsef_cellpose.train; see services/cellpose/README.md\n"
                    + yaml.safe_dump(data, sort_keys=False, width=120))
    load_manifest(out)  # validates (schema, name == folder name)


def _manifest(name: str, args: argparse.Namespace, nbase: list[int], weights_sha: str, training: dict[str, Any],
              metrics: dict[str, float]) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "name": name,
        "version": "1",
        "family": "cellpose",
        "framework": "pytorch",
        "source": "project",
        "description": (
            "Cellpose CPnet trained from scratch by OpSeF on dsb2018/train (35 images, nuclei, fluorescence "
            "and H&E as grey). 2D; 3D via do_3d or stitch_threshold. Input: grey, or channels [cyto, nucleus] "
            "picks the plane (channel 0 = mean of RGB). Bright-background images are inverted (options.invert auto)."
        ),
        "dims": [2, 3],
        "axes": ["YX", "YXC", "ZYX", "ZYXC"],
        "channels": 1,
        "min_size_px": 16,
        "weights": [{"path": WEIGHTS_FILE, "sha256": weights_sha}],
        "defaults": {
            "scale": 1.0,
            "flow_threshold": 0.4,
            "cellprob_threshold": 0.0,
            "min_size": 15,
            "channels": [0, 0],
            "normalize": True,
            "norm_percentile_low": 1.0,
            "norm_percentile_high": 99.0,
        },
        # invert "auto": bright-background (H&E) images are inverted before the network; chosen on
        # dsb2018/train, where the network finds no H&E nuclei uninverted (see README).
        "options": {"nchan": 2, "nbase": nbase, "invert": "auto"},
        "training": training,
        "metrics": metrics,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = args.out.resolve()
    name = out.name
    data = args.data.resolve()
    nbase = [int(n) for n in args.nbase.split(",")]
    if len(nbase) != 4:
        raise SystemExit("--nbase needs 4 comma-separated widths")
    cache = Path(tempfile.gettempdir()) / "opsef-cellpose-train-cache"
    os.environ.setdefault("CELLPOSE_LOCAL_MODELS_PATH", str(cache / "cellpose"))
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache / "numba"))
    os.environ.setdefault("MPLCONFIGDIR", str(cache / "matplotlib"))

    import torch
    from cellpose import train as cp_train
    from cellpose import utils as cp_utils
    from cellpose.resnet_torch import CPnet

    from opsef_protocol.adapter import RuntimeOptions
    from opsef_protocol.manifest import ModelManifest, sha256_file

    from opsef_cellpose.adapter import CellposeAdapter, _version

    if args.threads:
        torch.set_num_threads(args.threads)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    train_items = load_split(data, "train")
    val_items = load_split(data, "val")
    logger.info("dsb2018: %d train, %d val images", len(train_items), len(val_items))
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE
    old_manifest = out / "manifest.yaml"

    if not args.eval_only:
        train_x = [np.stack([to_grey(it["image"]), np.zeros(it["image"].shape[:2], np.float32)]) for it in train_items]
        train_y = [it["labels"].astype(np.int32) for it in train_items]
        diam_train = float(np.mean([cp_utils.diameters(y)[0] for y in train_y]))
        net = CPnet([2, *nbase], 3, sz=3, mkldnn=False, max_pool=True, diam_mean=diam_train)
        net.to(torch.device("cpu"))
        n_params = sum(p.numel() for p in net.parameters())
        logger.info("CPnet nbase=%s: %d parameters; mean train diameter %.1f px", nbase, n_params, diam_train)
        t0, c0 = time.time(), time.process_time()
        with tempfile.TemporaryDirectory() as tmp:
            saved, train_losses, _ = cp_train.train_seg(
                net, train_data=train_x, train_labels=train_y, channels=None, normalize=True,
                n_epochs=args.epochs, learning_rate=args.learning_rate, weight_decay=args.weight_decay,
                batch_size=args.batch_size, bsize=args.bsize, nimg_per_epoch=args.nimg_per_epoch,
                rescale=False, scale_range=1.0, min_train_masks=1, save_path=tmp, save_every=10**9,
                model_name="cpnet",
            )
            train_s, train_cpu_s = time.time() - t0, time.process_time() - c0
            state = torch.load(str(saved), map_location="cpu", weights_only=True)
        half = {k: (v.half() if v.is_floating_point() and k not in ("diam_mean", "diam_labels") else v) for k, v in state.items()}
        torch.save(half, str(weights))
        training = {
            "command": f"python -m opsef_cellpose.train --data ../shared/data/dsb2018 --out services/cellpose/models/{name} "
                       f"--epochs {args.epochs} --nbase {args.nbase} --bsize {args.bsize} --batch-size {args.batch_size} "
                       f"--nimg-per-epoch {args.nimg_per_epoch} --learning-rate {args.learning_rate} --seed {args.seed}",
            "from_scratch": True,
            "data": "dsb2018/train (35 images: 29 fluorescence, 6 H&E-like), RGB -> grey (mean), not inverted; "
                    "input channels [grey, zeros]",
            "validation_data": "dsb2018/val (15 images), never trained on",
            "epochs": args.epochs,
            "crop": args.bsize,
            "batch_size": args.batch_size,
            "images_per_epoch": args.nimg_per_epoch,
            "network": f"CPnet nbase [2, {', '.join(map(str, nbase))}] ({n_params} parameters), weights stored float16",
            "optimizer": f"AdamW lr {args.learning_rate}, weight decay {args.weight_decay} (cellpose.train.train_seg schedule)",
            "augmentation": "random rotation, flip, resize x0.5..1.5 (rescale=False: images at their own scale)",
            "mean_train_diameter_px": round(diam_train, 2),
            "final_train_loss": round(float(train_losses[-1]), 4),
            "time_s": round(train_s, 1),
            "cpu_time_s": round(train_cpu_s, 1),
            "hardware": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads",
            "versions": {"cellpose": _version("cellpose"), "torch": str(torch.__version__), "numpy": str(np.__version__)},
            "seed": args.seed,
        }
        logger.info("trained %d epochs in %.1f s; weights %s (%.2f MB)", args.epochs, train_s, weights, weights.stat().st_size / 1e6)
        # Record the training before evaluating, so --eval-only can redo the evaluation.
        _write_manifest(out, _manifest(name, args, nbase, sha256_file(weights), training, {}))
    else:
        import yaml

        training = yaml.safe_load(old_manifest.read_text())["training"]

    # Write a manifest, load the model back through the adapter, and evaluate on val.
    _write_manifest(out, _manifest(name, args, nbase, sha256_file(weights), training, {}))
    from opsef_protocol.manifest import load_manifest

    manifest: ModelManifest = load_manifest(out)
    adapter = CellposeAdapter(manifest, out, RuntimeOptions(device="cpu", threads=args.threads, cache_dir=cache))
    adapter.load()
    t1 = time.time()
    defaults = dict(manifest.defaults)
    result = evaluate(val_items, lambda img: adapter.predict(img[..., :3] if img.ndim == 3 else img,
                                                           "YXC" if img.ndim == 3 else "YX", defaults))
    eval_s = time.time() - t1
    metrics: dict[str, float] = {}
    for key, label in (("all", "dsb2018_val"), ("fluo", "dsb2018_val_fluo"), ("he", "dsb2018_val_he")):
        if key in result["pooled"]:
            for m in ("precision", "recall", "f1", "ap"):
                metrics[f"{label}/{m}@0.5"] = round(float(result["pooled"][key][m]), 4)
    training = {**training, "weights_bytes": weights.stat().st_size, "val_eval_time_s": round(eval_s, 1)}
    _write_manifest(out, _manifest(name, args, nbase, sha256_file(weights), training, metrics))

    print(f"\n{name}: dsb2018/val, IoU >= 0.5, TP/FP/FN pooled over images")
    print(f"{'subset':<8}{'n_gt':>6}{'tp':>6}{'fp':>6}{'fn':>6}{'prec':>8}{'recall':>8}{'f1':>8}{'ap':>8}")
    for key, r in result["pooled"].items():
        print(f"{key:<8}{r['tp'] + r['fn']:>6}{r['tp']:>6}{r['fp']:>6}{r['fn']:>6}"
              f"{r['precision']:>8.3f}{r['recall']:>8.3f}{r['f1']:>8.3f}{r['ap']:>8.3f}")
    print("per image:")
    for r in result["images"]:
        print(f"  {r['id']} {r['kind']:<5} tp {r['tp']:>4} fp {r['fp']:>4} fn {r['fn']:>4} f1 {r['f1']:.3f}")
    print(f"weights: {weights} ({weights.stat().st_size / 1e6:.2f} MB); training {training.get('time_s')} s; val eval {eval_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
