"""``opsef-orchestrate segment --model SERVICE:MODEL IMAGE... -o OUT/``."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

__all__ = ["segment", "parse_param_options"]

logger = logging.getLogger(__name__)


def parse_param_options(values: tuple[str, ...]) -> dict[str, Any]:
    """``("prob_threshold=0.5", "n_tiles=[2,2]")`` -> validated parameter dict."""
    import yaml

    from opsef_protocol.params import validate_params

    params: dict[str, Any] = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} must look like NAME=VALUE", param_hint="--param")
        key, raw = item.split("=", 1)
        params[key.strip()] = yaml.safe_load(raw)
    try:
        return validate_params(params)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--param") from None


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-m", "--model", "model_ref", required=True, help="SERVICE:MODEL, e.g. stardist:stardist_dsb2018_starter.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("-p", "--param", "params", multiple=True, help="Segment parameter NAME=VALUE (repeatable), e.g. prob_threshold=0.6.")
@click.option("--axes", help="Axes of the stored array when the file's metadata is missing or wrong (e.g. ZYX).")
@click.option("--series", help="Series index or name (LIF, OME-TIFF).")
@click.option("--channel", type=int, help="Keep one channel.")
@click.option("--time", "time_point", type=int, help="Keep one time point.")
@click.option("--endpoint", help="Explicit endpoints NAME=HOST:PORT[,...] (also $OPSEF_ENDPOINTS).")
@click.option("--no-start", is_flag=True, help="Do not start a local service that is not running.")
@click.option("--timeout", default=600.0, show_default=True, help="Deadline per image, seconds.")
def segment(images: tuple[Path, ...], model_ref: str, output: Path, params: tuple[str, ...], axes: str | None,
            series: str | None, channel: int | None, time_point: int | None, endpoint: str | None, no_start: bool,
            timeout: float) -> None:
    """Segment IMAGES with one model and write instance label images (uint16/uint32 TIFF) to OUTPUT."""
    from opsef_orchestrator.client import SegmentError, SegmenterClient
    from opsef_orchestrator.io import ImageReadError, read_image, write_labels
    from opsef_orchestrator.manager import ServiceManager, parse_endpoints
    from opsef_orchestrator.segmentation import parse_model_ref, service_input

    try:
        ref = parse_model_ref(model_ref)
        mgr = ServiceManager(endpoints=parse_endpoints(endpoint))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    parameters = parse_param_options(params)
    series_arg: int | str | None = int(series) if series and series.isdigit() else series
    try:
        target = mgr.endpoint(ref.service) if no_start else mgr.ensure_running(ref.service)
    except Exception as exc:  # noqa: BLE001 - one line for the user
        raise click.ClickException(str(exc)) from None
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"{output}: cannot create the output folder ({exc.strerror or exc})") from None
    failed = 0
    with SegmenterClient(target, timeout=timeout) as client:
        for path in images:
            try:
                img = read_image(path, axes=axes, series=series_arg, channel=channel, time=time_point)
                data, img_axes = service_input(img)
                result = client.segment(data, img_axes, ref.model, parameters, request_id=path.name)
                out = write_labels(output / f"{path.stem}_labels.tif", result.labels, pixel_size=img.pixel_size)
            except (ImageReadError, ValueError) as exc:
                failed += 1
                click.echo(f"error: {exc}", err=True)
                continue
            except SegmentError as exc:
                failed += 1
                click.echo(f"error: {path}: {exc.code.name}: {exc.details}", err=True)
                continue
            except OSError as exc:  # disk full, read-only output: stop; label files written before are complete
                raise click.ClickException(f"{exc.filename or output}: cannot write ({exc.strerror or exc}); "
                                           "label files written before are complete") from None
            click.echo(f"{path.name}: {result.object_count} objects -> {out} "
                       f"({result.model} {result.model_version}, predict {result.timings['predict_s']:.2f} s)")
    if failed:
        raise SystemExit(1)
