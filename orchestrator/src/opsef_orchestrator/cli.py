"""``opsef-orchestrate``: the command-line interface.

Arguments are parsed before anything heavy is imported; each sub-command
lives in :mod:`opsef_orchestrator.commands` and imports its libraries lazily.
"""
from __future__ import annotations

import importlib
import logging
import sys

import click

__all__ = ["main", "cli"]

# (module in opsef_orchestrator.commands, attribute) of each sub-command, in help order.
_COMMANDS: list[tuple[str, str]] = [
    ("services", "services"),
    ("doctor", "doctor"),
    ("segment", "segment"),
    ("demo", "demo"),
    ("run_cmds", "run"),
    ("run_cmds", "init"),
    ("run_cmds", "runs"),
    ("run_cmds", "config_reference_cmd"),
    ("io_cmds", "inspect"),
    ("io_cmds", "preprocess"),
    ("analysis_cmds", "evaluate"),
    ("analysis_cmds", "export_imagej"),
    ("analysis_cmds", "import_imagej"),
]


class _LazyGroup(click.Group):
    """A group whose sub-commands are imported only when listed or called."""

    def _load(self) -> None:
        if getattr(self, "_loaded", False):
            return
        for module, attr in _COMMANDS:
            try:
                mod = importlib.import_module(f"opsef_orchestrator.commands.{module}")
            except ModuleNotFoundError as exc:
                if exc.name == f"opsef_orchestrator.commands.{module}":
                    continue
                raise
            cmd = getattr(mod, attr, None)
            if isinstance(cmd, click.Command):
                self.add_command(cmd)
        self._loaded = True

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        self._load()
        return super().get_command(ctx, name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="opsef-orchestrator")
def cli(verbose: int) -> None:
    """OpSeF: find the best preprocessing + CNN for your images, then run it at scale."""
    level = logging.WARNING - 10 * min(verbose, 2) if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main() -> None:
    """Console entry point."""
    cli(prog_name="opsef-orchestrate")


if __name__ == "__main__":
    main()
