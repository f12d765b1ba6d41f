"""The backend flags of ``rlm run``, ``rlm bench`` and ``rlm demo`` as backend keyword
arguments: ``-m``, ``--base-url``, ``--script FILE``, and the bar drawn on stderr while the
embedded model is assembled (the library itself prints nothing)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rlm.errors import ConfigError

__all__ = ["AssemblyBar", "assembly_progress", "backend_kwargs", "read_script"]


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
