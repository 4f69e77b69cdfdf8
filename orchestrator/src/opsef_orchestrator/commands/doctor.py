"""``opsef-orchestrate doctor``: check environments, services, weights, GPUs, limits and disk; explain fixes."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

__all__ = ["doctor"]


@click.command()
@click.option("--services", "names", help="Comma-separated services (default: every service folder).")
@click.option("--services-dir", type=click.Path(file_okay=False, path_type=Path), envvar="OPSEF_SERVICES_DIR",
              help="Folder of service folders (default: services/ of the checkout).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), envvar="OPSEF_STATE_DIR",
              help="Service manager state folder (default .opsef/state).")
@click.option("--endpoint", help="Explicit endpoints NAME=HOST:PORT[,...] (also $OPSEF_ENDPOINTS).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="A run configuration: check its services, endpoints, tile size and output folder.")
@click.option("--outputs", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"), show_default=True,
              help="Output folder whose disk is checked (overridden by --config).")
@click.option("--require-running", is_flag=True, help="A service that is not running is a problem, not a warning.")
@click.option("--quick", is_flag=True, help="Skip the per-environment version and GPU checks (no subprocesses).")
@click.option("--min-free-gb", default=2.0, show_default=True, help="Less free disk than this is a problem.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(names: str | None, services_dir: Path | None, state_dir: Path | None, endpoint: str | None,
           config_path: Path | None, outputs: Path, require_running: bool, quick: bool, min_free_gb: float,
           as_json: bool) -> None:
    """Check that everything a run needs is in place; print the command that fixes each problem.

    Exit code 1 when anything is wrong (warnings alone exit 0).
    """
    import dataclasses

    from opsef_orchestrator.doctor import exit_code, format_report, run_checks
    from opsef_orchestrator.manager import ServiceManager, parse_endpoints

    try:
        explicit = parse_endpoints(endpoint)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--endpoint") from None
    services = [s.strip() for s in names.split(",") if s.strip()] if names else None
    tile_size = 2048
    if config_path is not None:
        from opsef_orchestrator.config import ConfigError, load_config
        from opsef_orchestrator.segmentation import parse_model_ref

        try:
            cfg = load_config(config_path)
        except (ConfigError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        outputs, tile_size = cfg.outputs.root, cfg.tiling.tile_size
        explicit = {**cfg.endpoints, **explicit}
        services = services or sorted({parse_model_ref(m.model).service for m in cfg.models})
    manager = ServiceManager(state_dir=state_dir, endpoints=explicit, services_dir=services_dir)
    checks = run_checks(services=services, services_dir=services_dir, manager=manager, outputs=outputs,
                        tile_size=tile_size, require_running=require_running, check_envs=not quick,
                        gpu_check=not quick, min_free_gb=min_free_gb)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(c) for c in checks], indent=2))
    else:
        click.echo(format_report(checks))
    sys.exit(exit_code(checks))
