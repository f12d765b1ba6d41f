"""The interface every REPL environment implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from rlm.tools import Tool
from rlm.types import ExecResult, HostCall

__all__ = ["Environment", "HostCall"]


class Environment(ABC):
    """A REPL that runs model-written code.

    Lifecycle:
    1. create it (cheap: no process is started);
    2. ``start(call, tools)``: start the REPL; ``call`` reaches the host's LM handler,
       ``tools`` are the user's tools to expose (``rlm.tools.Tool``: an environment
       in the host process may call ``tool.function``; any other runs ``tool.source``,
       see ``shipped_tools``); calling it again does nothing;
    3. ``set_variable(name, value)`` any number of times (``context`` first);
    4. ``execute(code)`` any number of times: variables persist between calls.  Errors of the
       model's code come back in ``ExecResult.error``; failures of the environment itself
       raise ``rlm.EnvError``;
    5. ``close()``: release everything; safe to call twice.

    Whoever creates an environment closes it: RLM closes the ones it builds from a name.
    ``isolation`` says in a few words what the environment keeps model code away from.
    """

    name: ClassVar[str] = "base"
    supports_persistence: ClassVar[bool] = True
    #: Whether ``execute(timeout_s=...)`` / a per-block limit can stop a runaway block.
    supports_timeout: ClassVar[bool] = False
    isolation: ClassVar[str] = "nothing"
    #: Whether model code runs in the host process (tools are then called, not shipped).
    in_process: ClassVar[bool] = False

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this environment cannot run on this machine (an engine missing...); None: it can."""
        return None

    @abstractmethod
    def start(self, call: HostCall, tools: Mapping[str, Tool] | None = None) -> None:
        """Start the REPL (idempotent)."""

    @abstractmethod
    def set_variable(self, name: str, value: Any) -> None:
        """Bind ``name`` to ``value`` in the REPL."""

    @abstractmethod
    def execute(self, code: str, *, timeout_s: float | None = None) -> ExecResult:
        """Run one code block and report its output, error and final answer."""

    def interrupt(self) -> None:  # noqa: B027 - an optional hook: a no-op by default
        """Stop the block under way as soon as possible; called from another thread when
        the call tree stops (a cancel, a limit).  The block returns an error; an environment
        that has to kill its REPL for it starts a new one when it is next used.  The
        default does nothing (the block runs to its end)."""

    @abstractmethod
    def close(self) -> None:
        """Release the REPL (idempotent)."""

    def __enter__(self) -> Environment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
