"""``rlm backends`` and ``rlm envs``: what is registered (``rlm trace`` is in ``trace.py``)."""

from __future__ import annotations

import click

from rlm import registry

__all__ = ["backends", "envs"]


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
