"""``opsef-orchestrate run | init | runs list/show | config-reference``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

__all__ = ["run", "init", "runs", "config_reference_cmd"]


def _progress_printer():
    tty = sys.stderr.isatty()

    def show(line: str) -> None:
        if tty:
            sys.stderr.write("\r\033[K" + line)
            sys.stderr.flush()
        else:
            click.echo(line, err=True)

    return show


@click.command()
@click.argument("config", type=click.Path(exists=True, path_type=Path))
@click.option("--set", "overrides", multiple=True, help="Override a key: key.path=value (YAML value), repeatable.")
@click.option("--dry-run", is_flag=True, help="Print the plan (jobs, services) and exit.")
@click.option("--resume", "resume", type=click.Path(file_okay=False, path_type=Path), help="Continue this run folder.")
@click.option("--output-root", type=click.Path(file_okay=False, path_type=Path), help="Override outputs.root.")
def run(config: Path, overrides: tuple[str, ...], dry_run: bool, resume: Path | None, output_root: Path | None) -> None:
    """Execute a run configuration (a YAML file, or a run folder to rerun it from its record)."""
    from opsef_orchestrator.config import ConfigError, load_config
    from opsef_orchestrator.engine import RunError, make_plan
    from opsef_orchestrator.engine import run as run_engine

    if config.is_dir():
        config = config / "run.yaml"
        if not config.is_file():
            raise click.ClickException(f"{config.parent}: not a run folder (no run.yaml)")
    extra = list(overrides) + ([f"outputs.root={output_root.resolve()}"] if output_root else [])
    try:
        cfg = load_config(config, extra)
        plan = make_plan(cfg)
    except (ConfigError, RunError) as exc:
        raise click.ClickException(str(exc)) from None
    if dry_run:
        click.echo(plan.describe(cfg))
        return
    try:
        result = run_engine(cfg, run_dir=resume, progress=_progress_printer())
    except RunError as exc:
        raise click.ClickException(str(exc)) from None
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    c = result.record["counts"]
    click.echo(f"run folder: {result.run_dir}")
    click.echo(f"jobs: {c['ok']} computed, {c['cached']} from cache, {c['failed']} failed "
               f"({result.record['stages']['total_s']:.1f} s)")
    if result.evaluation is not None:
        cols = [x for x in ("rank", "combination", "precision", "recall", "f1@0.5", "ap@0.5", "mAP") if x in result.evaluation]
        click.echo(result.evaluation[cols].head(10).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if (result.run_dir / "report.html").is_file():
        click.echo(f"report: {result.run_dir / 'report.html'}")
    if result.failed:
        for f in result.failed[:20]:
            click.echo(f"FAILED {f['id']}: {f.get('error', '')}", err=True)
        raise SystemExit(1)


@click.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), default="opsef-run.yaml")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: Path, force: bool) -> None:
    """Write a commented run configuration template."""
    from opsef_orchestrator.config import TEMPLATE

    if path.exists() and not force:
        raise click.ClickException(f"{path} exists; pass --force to overwrite")
    path.write_text(TEMPLATE)
    click.echo(f"wrote {path}; check it with: opsef-orchestrate run {path} --dry-run")


@click.command("config-reference")
def config_reference_cmd() -> None:
    """Print the run configuration reference (every key), generated from the schema."""
    from opsef_orchestrator.config import config_reference

    click.echo(config_reference())


@click.group()
def runs() -> None:
    """Find past runs."""


@runs.command("list")
@click.option("--root", default="runs", show_default=True, type=click.Path(file_okay=False, path_type=Path))
def list_runs(root: Path) -> None:
    """List run folders under ROOT with their status."""
    if not root.is_dir():
        click.echo(f"no runs under {root}")
        return
    for d in sorted(p for p in root.iterdir() if p.is_dir() and (p / "run.yaml").is_file()):
        rec = d / "record.json"
        if rec.is_file():
            r = json.loads(rec.read_text())
            c = r.get("counts", {})
            click.echo(f"{d.name:<40} {r.get('status', '?'):<9} {r.get('finished', ''):<20} "
                       f"jobs ok {c.get('ok', 0)} cached {c.get('cached', 0)} failed {c.get('failed', 0)}")
        else:
            n = sum(1 for _ in open(d / "jobs.jsonl")) if (d / "jobs.jsonl").is_file() else 0
            click.echo(f"{d.name:<40} {'incomplete':<9} {'':<20} {n} jobs journaled (resume: opsef-orchestrate run {d / 'run.yaml'} --resume {d})")


@runs.command("show")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def show_run(run_dir: Path) -> None:
    """Summary of one run: status, versions, timings, leaderboard."""
    rec = run_dir / "record.json"
    if not rec.is_file():
        raise click.ClickException(f"{run_dir}: no record.json (incomplete run?)")
    r = json.loads(rec.read_text())
    click.echo(f"{run_dir.name}: {r['status']} ({r['started']} -> {r['finished']}) on {r['host']['name']}")
    for name, s in r["services"].items():
        click.echo(f"  {name}: {s['framework']} {s['framework_version']} on {s['device']} at {s['endpoint']}")
    for ref, m in r["models"].items():
        click.echo(f"  {ref} {m['version']} sha256 {m['weights_sha256'][:12] or '-'}")
    click.echo(f"  jobs: {r['counts']}; stages: {r['stages']}")
    board = run_dir / "tables" / "leaderboard.csv"
    if board.is_file():
        click.echo(board.read_text())
