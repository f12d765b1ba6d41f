"""``rlm models``: the registered backends, the models the price table knows, their prices."""

from __future__ import annotations

import json
from typing import Any

import click

from rlm import registry
from rlm.backends import prices
from rlm.backends.presets import PRESETS
from rlm.errors import UnknownBackendError

__all__ = ["models"]

#: Backends whose models are priced by a section of the table other than a preset's.
_SECTIONS = {"anthropic": "anthropic", "gemini": "gemini"}
#: How backends without a section of their own are priced.
_NOTES = {"local": "free (the embedded model)", "scripted": "free (scripted replies)",
          "openrouter": "the cost OpenRouter reports per call; else the vendor's price below"}


def _rows(name: str) -> tuple[str | None, str | None]:
    """``(section, note)`` for the backend ``name``."""
    preset = PRESETS.get(name)
    if preset is not None and preset.local:
        return None, "free (self-hosted server)"
    section = _SECTIONS.get(name) or (preset.prices if preset else None)
    if name == "openrouter":
        return None, _NOTES[name]
    return section, _NOTES.get(name, None if section else "set by the backend (plugin)")


def _listing(only: str | None) -> list[dict[str, Any]]:
    names = registry.backend_names()
    if only is not None:
        if only not in names:
            raise UnknownBackendError(f"unknown backend {only!r}; known: {', '.join(names)}")
        names = [only]
    found: list[dict[str, Any]] = []
    for name in names:
        section, note = _rows(name)
        entry: dict[str, Any] = {"backend": name, "note": note, "models": []}
        if name == "openrouter":
            sections = [s for s in prices.sections() if s in ("openai", "anthropic", "gemini")]
            vendor = {"gemini": "google"}
            entry["models"] = [{"model": f"{vendor.get(s, s)}/{m}", **p.to_dict()}
                               for s in sections for m, p in prices.entries(s)]
        elif section is not None:
            entry["models"] = [{"model": m, **p.to_dict()} for m, p in prices.entries(section)]
        found.append(entry)
    return found


def _usd(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


@click.command()
@click.argument("backend", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def models(backend: str | None, as_json: bool) -> None:
    """List backends, the models with a known price, and the prices (USD per million
    tokens: input, output, cache write, cache read; '-' is the input price).

    Any other model works too: give its price with backend_kwargs={'price_per_mtok': ...}.
    """
    listing = _listing(backend)
    if as_json:
        click.echo(json.dumps({"checked": prices.checked(), "unit": "USD per million tokens",
                               "backends": listing}, indent=2))
        return
    click.echo(f"Prices in USD per million tokens, checked {prices.checked()}.")
    click.echo(f"{'backend':<12} {'model':<50} {'input':>7} {'output':>7} {'c.write':>7} "
               f"{'c.read':>7}")
    for entry in listing:
        if entry["note"]:
            click.echo(f"{entry['backend']:<12} {'(' + entry['note'] + ')'}")
        for row in entry["models"]:
            click.echo(f"{entry['backend']:<12} {row['model']:<50} {_usd(row['input']):>7} "
                       f"{_usd(row['output']):>7} {_usd(row['cache_write']):>7} "
                       f"{_usd(row['cache_read']):>7}")
