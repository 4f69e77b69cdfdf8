"""``evaluate``, ``export-imagej`` and ``import-imagej``: accuracy and the ImageJ/AnnotatorJ round trip."""
from __future__ import annotations

import logging
from pathlib import Path

import click

__all__ = ["evaluate", "export_imagej", "import_imagej"]

logger = logging.getLogger(__name__)

_IMAGE_EXT = (".ome.tif", ".ome.tiff", ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")
_LABEL_SUFFIXES = ("_labels", "_label", "_masks", "_mask", "_gt", "_pred", "_prediction", "_seg")


def _strip_ext(name: str) -> str | None:
    low = name.lower()
    for ext in _IMAGE_EXT:
        if low.endswith(ext):
            return name[: -len(ext)]
    return None


def _key(path: Path) -> str:
    """Name used to pair files: file name without extension and label suffixes."""
    stem = _strip_ext(path.name) or path.stem
    changed = True
    while changed:
        changed = False
        for suf in _LABEL_SUFFIXES:
            if stem.lower().endswith(suf) and len(stem) > len(suf):
                stem = stem[: -len(suf)]
                changed = True
    return stem


def _is_label_name(path: Path) -> bool:
    stem = _strip_ext(path.name) or path.stem
    return any(stem.lower().endswith(s) for s in _LABEL_SUFFIXES)


def _image_files(root: Path, recursive: bool = True) -> list[Path]:
    if root.is_file():
        return [root]
    it = root.rglob("*") if recursive else root.glob("*")
    return sorted(p for p in it if p.is_file() and _strip_ext(p.name) is not None and not p.name.startswith("."))


def _read(path: Path):
    import numpy as np

    low = path.name.lower()
    if low.endswith(".npy"):
        return np.load(path)
    if low.endswith((".tif", ".tiff")):
        import tifffile

        return tifffile.imread(path)
    import imageio.v3 as iio

    return iio.imread(path)


def _combination(pred_root: Path, f: Path) -> dict[str, str]:
    if pred_root.is_file():
        return {"combination": f.parent.name}
    rel = f.parent.relative_to(pred_root)
    parts = rel.parts
    ids = {"combination": rel.as_posix() if parts else pred_root.name}
    if len(parts) >= 2:
        ids["pipeline"] = parts[0]
        ids["model"] = parts[1]
        if len(parts) > 2:
            ids["params"] = "/".join(parts[2:])
    return ids


@click.command("evaluate")
@click.argument("pred", type=click.Path(exists=True, path_type=Path))
@click.argument("gt", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Folder for evaluation_per_image.csv and leaderboard.csv.")
@click.option("--thresholds", default=None, help="Comma-separated IoU thresholds (default 0.5,0.55,...,0.95).")
@click.option("--european", is_flag=True, help="CSV with ';' separator and ',' decimal mark.")
@click.option("--parquet", is_flag=True, help="Also write parquet tables.")
@click.option("--sort-by", default="mAP", show_default=True, help="Leaderboard ranking metric.")
def evaluate(pred: Path, gt: Path, out_dir: Path | None, thresholds: str | None, european: bool,
             parquet: bool, sort_by: str) -> None:
    """Score predicted label images PRED against ground truth GT (files, or folders matched by name).

    Sub-folders of PRED are combinations (e.g. PRED/pipeline/model/img_labels.tif);
    names are matched after removing extensions and suffixes such as _labels, _mask(s), _gt.
    AP is TP/(TP+FP+FN) (DSB2018/StarDist convention); mAP averages it over the thresholds.
    """
    import pandas as pd

    from opsef_orchestrator.evaluation import DEFAULT_THRESHOLDS, evaluate_pair, evaluation_rows, leaderboard
    from opsef_orchestrator.tables import write_table

    try:
        ths = tuple(float(t) for t in thresholds.split(",")) if thresholds else DEFAULT_THRESHOLDS
    except ValueError:
        raise click.BadParameter(f"not a list of numbers: {thresholds!r}", param_hint="--thresholds") from None
    gt_files = _image_files(gt)
    gt_by_key: dict[str, Path] = {}
    for f in gt_files:
        k = _key(f)
        if k in gt_by_key:
            raise click.ClickException(f"two ground-truth files have the name {k!r}: {gt_by_key[k]} and {f}")
        gt_by_key[k] = f
    pred_files = _image_files(pred)
    if any(_is_label_name(f) for f in pred_files) and pred.is_dir():
        pred_files = [f for f in pred_files if _is_label_name(f)]
    pairs = [(f, gt_by_key[_key(f)]) for f in pred_files if _key(f) in gt_by_key]
    if gt.is_file() and pred.is_file():
        pairs = [(pred, gt)]
    if not pairs:
        raise click.ClickException(
            f"no prediction in {pred} matches a ground-truth name in {gt} "
            f"(prediction names: {sorted({_key(f) for f in pred_files})[:5]}, "
            f"ground truth: {sorted(gt_by_key)[:5]})"
        )
    rows = []
    for pf, gf in pairs:
        try:
            res = evaluate_pair(_read(gf), _read(pf), thresholds=ths)
        except ValueError as exc:
            raise click.ClickException(f"{pf} vs {gf}: {exc}") from None
        rows += evaluation_rows(res, image=_key(gf), **_combination(pred, pf))
        logger.info("%s vs %s: f1@%g=%.3f mAP=%.3f", pf, gf, ths[0], res[f"f1@{ths[0]:g}"], res["mAP"])
    df = pd.DataFrame(rows)
    by = [c for c in ("combination", "pipeline", "model", "params") if c in df.columns]
    lb = leaderboard(df, by=by, sort_by=sort_by)
    dialect = "european" if european else "default"
    if out_dir is not None:
        write_table(df, out_dir / "evaluation_per_image.csv", dialect=dialect, parquet=parquet)
        write_table(lb, out_dir / "leaderboard.csv", dialect=dialect, parquet=parquet)
        click.echo(f"wrote {out_dir / 'leaderboard.csv'} and {out_dir / 'evaluation_per_image.csv'}")
    cols = [c for c in ["rank", *by, "n_images", "n_true", "n_pred", f"f1@{ths[0]:g}", f"ap@{ths[0]:g}", "mAP",
                        "mean_matched_iou", "splits", "merges"] if c in lb.columns]
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        click.echo(lb[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
