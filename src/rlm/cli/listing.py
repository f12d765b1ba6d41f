"""``rlm backends``, ``rlm envs`` and ``rlm trace show``: what is registered, what happened."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from rlm import registry
from rlm.config import user_dir
from rlm.errors import ConfigError
from rlm.trace import load

__all__ = ["backends", "envs", "trace"]


@click.command()
def backends() -> None:
    """List the registered backend names (use with -b/--backend)."""
    for name in registry.backend_names():
        click.echo(name)


@click.command()
def envs() -> None:
    """List the registered environment names (use with -e/--env)."""
    for name in registry.environment_names():
        click.echo(name)


@click.group()
def trace() -> None:
    """Read trace files written by `rlm run`."""


def _trace_file(path: Path | None) -> Path:
    """``path`` itself, or the newest ``*.jsonl`` in a folder (default: the user traces)."""
    folder = user_dir() / "traces" if path is None else path
    if folder.is_dir():
        files = sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
        if not files:
            raise ConfigError(f"no trace files in {folder}")
        return files[-1]
    if not folder.is_file():
        raise ConfigError(f"trace file not found: {folder}")
    return folder


@trace.command("show")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the tree as JSON.")
def show(path: Path | None, as_json: bool) -> None:
    """Print the call tree of the last run in PATH.

    PATH is a trace file or a folder (its newest trace); without PATH, the newest trace in
    the user folder ($RLM_USER_PATH/traces).
    """
    node = load(_trace_file(path))
    if as_json:
        click.echo(json.dumps(node.to_dict(), indent=2, ensure_ascii=False, default=str))
        return
    from rlm.trace.console import print_tree

    print_tree(node, file=sys.stdout)
