"""The backend flags of ``rlm run``, ``rlm bench`` and ``rlm demo`` as backend keyword
arguments: ``-m``, ``--base-url``, ``--script FILE``, and the bar drawn on stderr while the
embedded model is assembled (the library itself prints nothing); the model, environment
and limit options that ``rlm run``, ``rlm batch`` and ``rlm serve`` share
(``model_and_limit_options``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from rlm.errors import ConfigError

__all__ = ["AssemblyBar", "assembly_progress", "backend_kwargs", "model_and_limit_options",
           "read_script"]

#: The shared options (flag, its settings, the default help); ``help`` overrides a help.
_SHARED: list[tuple[tuple[str, ...], dict[str, Any], str]] = [
    (("-b", "--backend"), {"metavar": "NAME"}, "Backend name (see `rlm backends`)."),
    (("-m", "--model"), {"metavar": "NAME"}, "Model name for the backend."),
    (("--base-url",), {"metavar": "URL"}, "API base URL (OpenAI-compatible servers)."),
    (("-e", "--env"), {"metavar": "NAME"}, "Environment name (see `rlm envs`)."),
    (("--max-depth",), {"type": int, "metavar": "N"},
     "Depth limit; child RLMs run while depth < N (default 1: none)."),
    (("--max-iterations",), {"type": int, "metavar": "N"}, "REPL turns."),
    (("--max-budget",), {"type": float, "metavar": "USD"}, "Spending limit in USD."),
    (("--max-timeout",), {"type": float, "metavar": "S"}, "Time limit in seconds."),
    (("--max-tokens",), {"type": int, "metavar": "N"}, "Input + output token limit."),
    (("--max-errors",), {"type": int, "metavar": "N"}, "Failed code blocks allowed."),
    (("--sub-backend",), {"metavar": "NAME"},
     "Backend for sub-calls (default: the root backend)."),
    (("--sub-model",), {"metavar": "NAME"}, "Model for sub-calls."),
]


def model_and_limit_options(**help: str) -> Callable[[Any], Any]:
    """A decorator adding the backend, model, environment, limit and sub-model options, in
    that order; ``help`` rewords some, by parameter name (``max_budget="USD a request."``)."""
    options = []
    for flags, settings, default in _SHARED:
        name = flags[-1].lstrip("-").replace("-", "_")
        options.append(click.option(*flags, **settings, help=help.pop(name, default)))
    if help:
        raise TypeError(f"no shared option named {sorted(help)}")

    def decorate(function: Any) -> Any:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def read_script(path: Path) -> list[str]:
    """The replies of a ``--script`` file: a JSON list of strings."""
    try:
        replies = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"script file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read script file {path}: {exc}") from None
    if not isinstance(replies, list) or not all(isinstance(r, str) for r in replies):
        raise ConfigError(f"script file {path} must hold a JSON list of reply strings")
    return replies


def backend_kwargs(backend: str, *, model: str | None = None, base_url: str | None = None,
                   script: Path | None = None, options: Mapping[str, Any] | None = None
                   ) -> dict[str, Any]:
    """The keyword arguments for the backend ``backend`` from the flags given.

    ``--script`` goes with the scripted backend only, and the scripted backend needs it;
    the embedded model gets an ``AssemblyBar``.
    """
    kwargs = dict(options or {})
    if model:
        kwargs["model"] = model
    if base_url:
        kwargs["base_url"] = base_url
    if script is not None:
        if backend != "scripted":
            raise ConfigError("--script needs the scripted backend (-b scripted)")
        kwargs["responses"] = read_script(script)
    elif backend == "scripted":
        raise ConfigError("the scripted backend needs --script FILE (a JSON list of replies)")
    return {**assembly_progress(backend), **kwargs}


def assembly_progress(backend: str) -> dict[str, Any]:
    """``{"progress": AssemblyBar()}`` for the embedded model's backend, else nothing."""
    return {"progress": AssemblyBar()} if backend == "local" else {}


class AssemblyBar:
    """Draws ``ensure_model``'s progress on stderr: on a terminal one line redrawn every
    5%, elsewhere (a log file) only the first and the last line."""

    width = 30

    def __init__(self) -> None:
        self._step = -1

    def __call__(self, name: str, done: int, total: int) -> None:
        step = done * 100 // max(total, 1) // 5
        if step == self._step:
            return
        self._step = step
        filled = int(self.width * done / max(total, 1))
        line = (f"rlm: assembling {name} [{'#' * filled}{'.' * (self.width - filled)}] "
                f"{done / 1e6:.0f}/{total / 1e6:.0f} MB")
        if sys.stderr.isatty():
            print(f"\r{line}", end="\n" if done >= total else "", file=sys.stderr, flush=True)
        elif done == total or done <= 8 << 20:
            print(line, file=sys.stderr, flush=True)
