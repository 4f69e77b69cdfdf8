"""``inspect`` and ``preprocess``: what the importer sees, and preprocessed images for inspection."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click

__all__ = ["inspect", "preprocess"]

logger = logging.getLogger(__name__)


def _fmt_size(ps: Any) -> str:
    if not ps:
        return "unknown"
    return " x ".join("?" if v is None else f"{v:.4g}" for v in ps) + " µm (z, y, x)"


def _validation_message(source: str, exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            parts.append(f"{loc}: {err['msg']}")
        return f"{source}: invalid configuration: " + "; ".join(parts)
    return f"{source}: {exc}"


@click.command("inspect")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--include", multiple=True, help="For a folder: patterns a file must match.")
@click.option("--exclude", multiple=True, help="For a folder: patterns that drop a file.")
def inspect(file: Path, as_json: bool, include: tuple[str, ...], exclude: tuple[str, ...]) -> None:
    """Print what the importer sees in FILE (or each image of a folder): series, axes, shape, dtype, pixel size."""
    from opsef_orchestrator.io import inspect_image, list_images

    try:
        files = list_images(file, include or None, exclude or None) if file.is_dir() else [file]
        infos = [inspect_image(f) for f in files]
    except ValueError as exc:  # ImageReadError included
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(infos if file.is_dir() else infos[0], indent=2, default=str))
        return
    if file.is_dir() and not infos:
        click.echo(f"{file}: no images")
    for info in infos:
        n = len(info["series"])
        click.echo(f"{info['path']}  [{info['format']}, {n} series]")
        for s in info["series"]:
            click.echo(f"  series {s['index']} {s['name']!r}: axes {s['axes'] or '?'} shape {s['shape']} "
                       f"{s['dtype']}  (stored {s['source_axes']} {s['source_shape']})  "
                       f"pixel size {_fmt_size(s.get('pixel_size'))}")
            if s.get("problem"):
                click.echo(f"    problem: {s['problem']} (give --axes when reading)")


def _load_config(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"{path}: cannot read configuration: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text) if path.suffix.lower() != ".json" else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise click.ClickException(f"{path}: not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise click.ClickException(f"{path}: configuration must be a mapping")
    return data


def _parse_z(text: str | None) -> Any:
    if text is None:
        return None
    try:
        if ":" in text:
            return [int(p) if p.strip() else None for p in text.split(":")]
        return int(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: use a plane index or start:stop[:step]", param_hint="--z") from None


def _parse_channel(text: str | None) -> Any:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r}: use an index or a comma-separated list", param_hint="--channel") from None
    return values[0] if len(values) == 1 else values


@click.command("preprocess")
@click.argument("config", required=False, type=click.Path(path_type=Path))
@click.option("-i", "--input", "input_", type=click.Path(path_type=Path), help="Image file or folder.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output folder.")
@click.option("-s", "--step", "steps", multiple=True,
              help="Pipeline step 'op' or 'op:key=value,...' (repeatable, in order), e.g. 'median:size=3'.")
@click.option("--name", default=None, help="Pipeline name for --step (default 'custom').")
@click.option("--include", multiple=True, help="Patterns a file must match (folders).")
@click.option("--exclude", multiple=True, help="Patterns that drop a file (folders).")
@click.option("--recursive", is_flag=True, default=None, help="Also look in sub-folders.")
@click.option("--axes", default=None, help="Stored axes when the file's metadata is wrong, e.g. ZCYX.")
@click.option("--series", default=None, help="Series index or name (LIF, OME).")
@click.option("--channel", default=None, help="Channel index or comma-separated indices.")
@click.option("--time", "time_", type=int, default=None, help="Time point.")
@click.option("--z", default=None, help="Plane index or start:stop[:step].")
@click.option("--list-ops", is_flag=True, help="Print the available operations and exit.")
def preprocess(config: Path | None, input_: Path | None, output: Path | None, steps: tuple[str, ...],
               name: str | None, include: tuple[str, ...], exclude: tuple[str, ...], recursive: bool | None,
               axes: str | None, series: str | None, channel: str | None, time_: int | None, z: str | None,
               list_ops: bool) -> None:
    """Run preprocessing pipelines from CONFIG (YAML/JSON) or flags and write the results as TIFF.

    Each image goes to OUTPUT/PIPELINE/NAME.tif with its axes and pixel size.
    Flags override the configuration's input, output, patterns and read options;
    --step adds a pipeline.
    """
    from pydantic import ValidationError

    from opsef_orchestrator.pipelines import PreprocessConfig, operations_reference, parse_step

    if list_ops:
        click.echo(operations_reference())
        return
    data: dict[str, Any] = _load_config(config) if config is not None else {}
    source = str(config) if config is not None else "options"
    if input_ is not None:
        data["input"] = str(input_)
    if output is not None:
        data["output"] = str(output)
    if include:
        data["include"] = list(include)
    if exclude:
        data["exclude"] = list(exclude)
    if recursive is not None:
        data["recursive"] = recursive
    read = dict(data.get("read") or {})
    for key, value in (("axes", axes), ("series", int(series) if series and series.isdigit() else series),
                       ("channel", _parse_channel(channel)), ("time", time_), ("z", _parse_z(z))):
        if value is not None:
            read[key] = value
    if read:
        data["read"] = read
    if steps:
        try:
            parsed = [parse_step(s).model_dump() for s in steps]
        except ValueError as exc:
            raise click.ClickException(_validation_message("--step", exc)) from None
        data.setdefault("pipelines", [])
        data["pipelines"] = list(data["pipelines"]) + [{"name": name or "custom", "steps": parsed}]
    try:
        cfg = PreprocessConfig.model_validate(data)
    except ValidationError as exc:
        raise click.ClickException(_validation_message(source, exc)) from None
    failures = _run(cfg)
    if failures:
        raise click.ClickException(f"{failures} image(s) failed (see above)")


def _run(cfg: Any) -> int:
    from opsef_orchestrator.io import list_images, read_image, write_image

    try:
        files = (list_images(cfg.input, cfg.include or None, cfg.exclude or None, recursive=cfg.recursive)
                 if cfg.input.is_dir() else [cfg.input])
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if not files:
        raise click.ClickException(f"{cfg.input}: no images (after include/exclude patterns)")
    failures = 0
    for f in files:
        try:
            image = read_image(f, **cfg.read.kwargs())
        except ValueError as exc:
            click.echo(f"error: {exc}", err=True)
            failures += 1
            continue
        rel = f.relative_to(cfg.input).with_suffix("") if cfg.input.is_dir() else Path(f.stem)
        stem = rel.as_posix().replace("/", "__")
        if stem.lower().endswith(".ome"):
            stem = stem[:-4]
        if cfg.read.series is not None:
            stem += f"_{image.series}"
        for pipe in cfg.pipelines:
            try:
                out = pipe.apply_image(image)
                target = cfg.output / pipe.name / f"{stem}.tif"
                write_image(target, out.data, out.axes, out.pixel_size)
            except ValueError as exc:
                click.echo(f"error: {f}: {exc}", err=True)
                failures += 1
                continue
            click.echo(f"{target}  {out.axes} {tuple(out.data.shape)} {out.data.dtype}")
    return failures
