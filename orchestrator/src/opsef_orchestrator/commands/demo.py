"""``opsef-orchestrate demo``: the main job on real data, services started automatically."""
from __future__ import annotations

from pathlib import Path

import click

__all__ = ["demo"]


@click.command()
@click.option("--data", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of images (with images/ and masks/ for scores). Default: ../shared/data/dsb2018/val, else a generated sample.")
@click.option("-o", "--output", default="demo-output", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--models", help="Comma-separated SERVICE:MODEL list (default: the three starter models).")
@click.option("--keep-services/--stop-services", default=True, show_default=True, help="Leave the services running afterwards.")
def demo(data: Path | None, output: Path, models: str | None, keep_services: bool) -> None:
    """Segment a folder of nuclei images with the starter models and print precision/recall/F1."""
    from opsef_orchestrator.demo import DEFAULT_DEMO_MODELS, run_demo
    from opsef_orchestrator.engine import RunError
    from opsef_orchestrator.manager import ServiceManager, available_services
    from opsef_orchestrator.segmentation import parse_model_ref

    try:
        refs = tuple(parse_model_ref(m.strip()) for m in models.split(",")) if models else tuple(
            m for m in DEFAULT_DEMO_MODELS if m.service in available_services()
        )
        mgr = ServiceManager()
        try:
            result = run_demo(output, data, refs, mgr, echo=click.echo)
        finally:
            if not keep_services:
                mgr.down(sorted({r.service for r in refs}))
    except (ValueError, RunError) as exc:
        raise click.ClickException(str(exc)) from None
    if result.failed:
        raise SystemExit(1)
