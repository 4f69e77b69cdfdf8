"""``evaluate``, ``export-imagej`` and ``import-imagej``: accuracy and the ImageJ/AnnotatorJ round trip."""
from __future__ import annotations

import logging
import re
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
        logger.debug("%s vs %s: f1@%g=%.3f mAP=%.3f", pf, gf, ths[0], res[f"f1@{ths[0]:g}"], res["mAP"])
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


# ----------------------------------------------------------------------------- ImageJ export / import
_CLASS_MASK = re.compile(r"^(?P<stem>.+)_MaskClass(?P<cls>\d{2})$")


def _find_image(stem: str, folders: list[Path], exclude: set[Path]) -> Path | None:
    for d in folders:
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.is_file() and f not in exclude and _strip_ext(f.name) is not None and not _is_label_name(f) \
                    and _key(f) == stem and not _CLASS_MASK.match(_strip_ext(f.name) or ""):
                return f
    return None


def _load_image(path: Path):
    img = _read(path)
    if img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    return img


@click.command("export-imagej")
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Export folder (images/, masks/, rois/, 10_ForFiji/FilePairList_*.txt, 12_TmpRoisFromFiji/).")
@click.option("--images", "images_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of the images (default: beside the labels).")
@click.option("--pixel-size", type=float, default=None, help="Pixel size in micrometres (TIFF calibration).")
@click.option("--allow-32bit", is_flag=True, help="Write 32-bit label TIFFs when a label id exceeds 65535.")
@click.option("--name", default="opsef", show_default=True, help="Name of the AnnotatorJ pair list.")
@click.option("--combination", "combinations", multiple=True,
              help="Run folders: combination(s) to export (default: the leaderboard's best, else all).")
def export_imagej(source: Path, out_dir: Path, images_dir: Path | None, pixel_size: float | None,
                  allow_32bit: bool, name: str, combinations: tuple[str, ...]) -> None:
    """Export label images in SOURCE for Fiji and AnnotatorJ.

    SOURCE is a run folder (labels/<combination>/<stem>.tif with the preprocessed images; one export
    folder per combination) or a plain folder of *_labels.tif with images of the same name.

    Writes 16-bit label TIFFs, ImageJ ROI zips (ROI names = label ids, class = ROI group) and the
    FilePairList that AnnotatorJ's "Import OpSeF" reads. Classes are taken from the run's
    tables/objects.csv (postprocess.classify), or from a table <stem>_objects.csv (columns label,
    class) beside plain label images. Label volumes (ZYX) give one ROI per object and slice (named
    <label>-z<slice>, on that slice); AnnotatorJ's pair list has 2D images only.
    """
    import pandas as pd

    from opsef_orchestrator.imagej import export_for_imagej

    if (source / "run.yaml").is_file() and (source / "labels").is_dir():
        _export_run(source, out_dir, combinations, pixel_size, allow_32bit, name)
        return
    label_files = [f for f in _image_files(source, recursive=False) if _is_label_name(f)]
    if not label_files:
        raise click.ClickException(f"no label images (*_labels.tif, *_mask.tif ...) in {source}")
    items = []
    for lf in label_files:
        stem = _key(lf)
        labels = _read(lf)
        if labels.ndim not in (2, 3):
            raise click.ClickException(f"{lf}: only 2D (YX) and 3D (ZYX) label images can be exported to ROIs "
                                       f"(shape {labels.shape})")
        img_path = _find_image(stem, [d for d in (images_dir, source) if d is not None], set(label_files))
        image = _load_image(img_path) if img_path else None
        if image is None:
            logger.warning("no image found for %s: exporting labels and ROIs only", lf)
        classes = None
        table = lf.parent / f"{stem}_objects.csv"
        if table.is_file():
            df = pd.read_csv(table, sep=None, engine="python")
            if {"label", "class"} <= set(df.columns):
                classes = {int(k): int(v) for k, v in zip(df["label"], df["class"])}
        items.append((stem, image, labels, classes))
    try:
        written = export_for_imagej(out_dir, items, pixel_size=pixel_size, name=name, allow_32bit=allow_32bit)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"exported {len(items)} images to {out_dir}: {len(written['rois'])} ROI zips"
               + (f", AnnotatorJ list {written['pairs'][0]}" if written["pairs"] else ""))


def _export_run(run_dir: Path, out_dir: Path, combinations: tuple[str, ...], pixel_size: float | None,
                allow_32bit: bool, name: str) -> None:
    """Export a run folder's label images, one sub-folder of ``out_dir`` per combination."""
    import pandas as pd

    from opsef_orchestrator.imagej import export_for_imagej

    available = sorted(p.name for p in (run_dir / "labels").iterdir() if p.is_dir())
    board = run_dir / "tables" / "leaderboard.csv"
    if not combinations:
        if board.is_file():
            combinations = (str(pd.read_csv(board, sep=None, engine="python").sort_values("rank")["combination"].iloc[0]),)
        else:
            combinations = tuple(available)
    unknown = sorted(set(combinations) - set(available))
    if unknown:
        raise click.ClickException(f"{run_dir}: no combination(s) {unknown}; available: {', '.join(available)}")
    objects = run_dir / "tables" / "objects.csv"
    table = pd.read_csv(objects, sep=None, engine="python", dtype={"image": str, "combination": str}) \
        if objects.is_file() else None
    if table is not None and "class" not in table.columns:
        table = None
    for combo in combinations:
        pipeline = combo.split("__", 1)[0]
        items = []
        for lf in sorted((run_dir / "labels" / combo).glob("*.tif")):
            labels = _read(lf)
            if labels.ndim not in (2, 3):
                raise click.ClickException(f"{lf}: only 2D (YX) and 3D (ZYX) label images can be exported to ROIs "
                                           f"(shape {labels.shape})")
            pre = run_dir / "preprocessed" / pipeline / lf.name
            classes = None
            if table is not None:  # postprocess.classify: the class becomes the ROI group
                rows = table[(table["combination"] == combo) & (table["image"] == lf.stem)]
                classes = {int(k): int(v) for k, v in zip(rows["label"], rows["class"])}
            items.append((lf.stem, _load_image(pre) if pre.is_file() else None, labels, classes))
        try:
            written = export_for_imagej(out_dir / combo, items, pixel_size=pixel_size, name=name, allow_32bit=allow_32bit)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"exported {len(items)} images of {combo} to {out_dir / combo}: {len(written['rois'])} ROI zips")


def _roi_stem(path: Path) -> str:
    stem = path.stem
    for suf in ("_RoiSet", "_ROIs", "_rois", "_roiset"):
        if stem.endswith(suf):
            stem = stem[: -len(suf)]
            break
    else:
        if stem.lower() in ("roiset", "rois"):
            return path.parent.name
    m = _CLASS_MASK.match(stem)
    if m:
        return m.group("stem")
    return _key(Path(stem + ".tif"))


@click.command("import-imagej")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default DIRECTORY/imported).")
@click.option("--images", "images_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of the images (for the shape and intensities).")
@click.option("--pixel-size", type=float, default=None, help="Pixel size in micrometres.")
@click.option("--european", is_flag=True, help="CSV with ';' separator and ',' decimal mark.")
@click.option("--parquet", is_flag=True, help="Also write parquet tables.")
def import_imagej(directory: Path, out_dir: Path | None, images_dir: Path | None, pixel_size: float | None,
                  european: bool, parquet: bool) -> None:
    """Re-import ROI zips and label images edited in Fiji/AnnotatorJ from DIRECTORY, then measure them.

    For every image the newest source wins (a ROI zip over a label TIFF when equally new); ROI groups
    (or AnnotatorJ _MaskClassNN masks) give the classes. Writes <stem>_labels.tif, <stem>_objects.csv
    and summary.csv.
    """
    import numpy as np
    import pandas as pd

    from opsef_orchestrator.classify import classify_objects
    from opsef_orchestrator.imagej import roi_zip_to_labels, write_label_tiff
    from opsef_orchestrator.measure import measure_objects
    from opsef_orchestrator.tables import write_table

    out_dir = out_dir or directory / "imported"
    files = [f for f in directory.rglob("*") if f.is_file() and out_dir not in f.parents]
    sources: dict[str, list[tuple[float, int, str, Path]]] = {}
    class_masks: dict[str, dict[int, Path]] = {}
    for f in files:
        if f.suffix.lower() in (".zip", ".roi"):
            sources.setdefault(_roi_stem(f), []).append((f.stat().st_mtime, 1, "roi", f))
        elif _strip_ext(f.name) is not None:
            m = _CLASS_MASK.match(_strip_ext(f.name) or "")
            if m:
                class_masks.setdefault(m.group("stem"), {})[int(m.group("cls"))] = f
            elif _is_label_name(f):
                sources.setdefault(_key(f), []).append((f.stat().st_mtime, 0, "labels", f))
    if not sources:
        raise click.ClickException(f"no ROI zips or label images (*_labels.tif) in {directory}")
    dialect = "european" if european else "default"
    summary = []
    all_label_files = {f for v in sources.values() for *_, f in v}
    for stem, cands in sorted(sources.items()):
        _, _, kind, src = max(cands, key=lambda c: (c[0], c[1]))
        folders = [d for d in (images_dir, src.parent, directory / "images", directory) if d is not None]
        img_path = _find_image(stem, folders, all_label_files)
        if img_path is None and src.parent.is_dir():
            imgs = [f for f in _image_files(src.parent, recursive=False) if f not in all_label_files
                    and not _is_label_name(f)]
            img_path = imgs[0] if len(imgs) == 1 else None
        image = _load_image(img_path) if img_path else None
        classes: dict[int, int] = {}
        if kind == "roi":
            if image is not None:
                shape = image.shape[:2] if image.ndim == 3 and image.shape[-1] == 3 else image.shape
            else:
                lab_cands = [f for _, _, k, f in cands if k == "labels"]
                if lab_cands:
                    shape = _read(lab_cands[0]).shape
                else:
                    from roifile import ImagejRoi

                    rois = ImagejRoi.fromfile(src)
                    rois = rois if isinstance(rois, list) else [rois]
                    shape = (max(r.bottom for r in rois) + 1, max(r.right for r in rois) + 1)
                    slices = max((r.z_position or r.position or 0) for r in rois)
                    shape = (slices, *shape) if slices > 1 else shape  # position 1 alone: a 2D image
                    logger.warning("%s: no image found; label image shape %s from the ROI extents", src, shape)
            try:
                labels, classes = roi_zip_to_labels(src, shape, return_classes=True)
            except ValueError as exc:
                raise click.ClickException(f"{src}: {exc}") from None
        else:
            labels = _read(src)
            if stem in class_masks:
                cimg = np.zeros(labels.shape, np.int64)
                for c, p in sorted(class_masks[stem].items()):
                    cimg[_read(p) > 0] = c
                classes = classify_objects(labels, cimg, by="overlap", min_fraction=0.5).to_dict()
        intensity = None
        if image is not None:
            if image.ndim == labels.ndim + 1 and image.shape[:-1] == labels.shape:
                intensity = image
            elif image.shape == labels.shape:
                intensity = image
        table = measure_objects(labels, intensity, pixel_size=pixel_size)
        table.insert(1, "class", table["label"].map(lambda k: classes.get(int(k), 0)).astype(int))
        table.insert(0, "image", stem)
        write_label_tiff(labels, out_dir / f"{stem}_labels.tif", pixel_size, allow_32bit=True)
        write_table(table, out_dir / f"{stem}_objects.csv", dialect=dialect, parquet=parquet)
        row = {"image": stem, "source": str(src), "kind": kind, "n_objects": len(table)}
        for c, n in table["class"].value_counts().sort_index().items():
            row[f"n_class_{c}"] = int(n)
        summary.append(row)
        click.echo(f"{stem}: {len(table)} objects from {src}")
    write_table(pd.DataFrame(summary).fillna(0), out_dir / "summary.csv", dialect=dialect, parquet=parquet)
    click.echo(f"wrote {len(summary)} images to {out_dir}")
