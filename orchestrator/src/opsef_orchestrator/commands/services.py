"""``opsef-orchestrate services up|down|status|logs|install``."""
from __future__ import annotations

import json

import click

__all__ = ["services"]


def _names(value: str | None) -> list[str] | None:
    return [s.strip() for s in value.split(",") if s.strip()] if value else None


def _manager(ctx: click.Context):
    from opsef_orchestrator.manager import ServiceManager, parse_endpoints

    try:
        return ServiceManager(state_dir=ctx.obj.get("state_dir"), endpoints=parse_endpoints(ctx.obj.get("endpoint")))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
@click.option("--state-dir", type=click.Path(file_okay=False), envvar="OPSEF_STATE_DIR", help="State folder (default .opsef/state).")
@click.option("--endpoint", help="Explicit endpoints NAME=HOST:PORT[,...] (also $OPSEF_ENDPOINTS).")
@click.pass_context
def services(ctx: click.Context, state_dir: str | None, endpoint: str | None) -> None:
    """Start, stop and inspect the model services (local processes by default)."""
    ctx.ensure_object(dict)
    ctx.obj.update(state_dir=state_dir, endpoint=endpoint)


@services.command()
@click.option("--services", "names", help="Comma-separated services (default: all).")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for SERVING.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N for the started services.")
@click.pass_context
def up(ctx: click.Context, names: str | None, timeout: float, device: str | None) -> None:
    """Build environments if needed, start services on loopback, wait until SERVING."""
    from opsef_orchestrator.envs import EnvError
    from opsef_orchestrator.manager import ServiceStartError

    mgr = _manager(ctx)
    try:
        eps = mgr.up(_names(names), timeout=timeout, extra_args=["--device", device] if device else None)
    except (EnvError, ServiceStartError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for name, ep in eps.items():
        click.echo(f"{name:<10} SERVING  {ep}")


@services.command()
@click.option("--services", "names", help="Comma-separated services (default: all running).")
@click.pass_context
def down(ctx: click.Context, names: str | None) -> None:
    """Stop local services gracefully."""
    for name in _manager(ctx).down(_names(names)):
        click.echo(f"{name:<10} stopped")


@services.command()
@click.option("--services", "names", help="Comma-separated services (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, names: str | None, as_json: bool) -> None:
    """Health, framework, versions, device and models of each service."""
    rows = _manager(ctx).status(_names(names))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        line = f"{r['service']:<10} {r['status']:<12} {r['endpoint'] or '-':<22}"
        if "framework" in r:
            line += f" {r['framework']} {r['framework_version']}  device={r['device']}  protocol={r['protocol']}"
            libs = {k: v for k, v in r.get("versions", {}).items() if k not in (r["framework"], "grpcio", "opsef-protocol")}
            line += "  " + " ".join(f"{k}={v}" for k, v in sorted(libs.items()))
        click.echo(line)
        for m in r.get("models", []):
            present = "weights present" if m["weights_present"] else "weights MISSING"
            dims = "/".join(f"{d}D" for d in m["dims"])
            click.echo(f"{'':<12}- {m['name']} {m['version']} ({m['source']}, {dims}, {present})")
    if any(r["status"] != "SERVING" for r in rows if r["endpoint"]):
        raise SystemExit(1)


@services.command()
@click.argument("name")
@click.option("-n", "--lines", default=50, show_default=True)
@click.pass_context
def logs(ctx: click.Context, name: str, lines: int) -> None:
    """Show the end of a local service's log."""
    click.echo(_manager(ctx).logs(name, lines) or f"no log for {name}")


@services.command()
@click.option("--services", "names", help="Comma-separated services (default: all).")
@click.pass_context
def install(ctx: click.Context, names: str | None) -> None:
    """Build the services' virtualenvs (cached by their pins) without starting them."""
    from opsef_orchestrator.envs import EnvError
    from opsef_orchestrator.manager import available_services

    mgr = _manager(ctx)
    try:
        for name, env in mgr.install(_names(names) or available_services(mgr.services_dir)).items():
            click.echo(f"{name:<10} {env}")
    except EnvError as exc:
        raise click.ClickException(str(exc)) from None
