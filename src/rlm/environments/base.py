"""The interface every REPL environment implements."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from rlm.errors import EnvStartError, MissingDependencyError
from rlm.tools import Tool
from rlm.types import ExecResult, HostCall

__all__ = ["Environment", "HostCall"]

#: What each class's ``probe`` found (``None``: the machine can run it), by class: asked
#: once per class and process, since a probe may start a sandbox or ask an engine.
_probed: dict[type, EnvStartError | MissingDependencyError | None] = {}
_probe_locks: dict[type, threading.Lock] = {}
_probe_locks_lock = threading.Lock()


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

    @classmethod  # noqa: B027 - an optional hook: nothing to check by default
    def probe(cls) -> None:
        """Raise ``EnvStartError`` (``MissingDependencyError`` for a missing extra) saying
        why this machine cannot run the environment (a tool or engine missing...); return
        if it can.  Write only the check: ``check_available`` runs it once per class."""

    @classmethod
    def check_available(cls) -> None:
        """Raise the error of this class's ``probe`` (run on first use, then remembered);
        environments call it before they start anything."""
        error = _probe_once(cls)
        if error is not None:
            raise type(error)(str(error))

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this environment cannot run on this machine (its ``probe``, asked once);
        ``None``: it can."""
        error = _probe_once(cls)
        return None if error is None else str(error)

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


def _probe_once(cls: type[Environment]) -> EnvStartError | MissingDependencyError | None:
    """What ``cls.probe()`` raised, or ``None``; one probe per class even when many threads
    start environments at once.  An unexpected error (a probe that timed out...) is not
    remembered: it propagates, and the next call probes again."""
    if cls in _probed:
        return _probed[cls]
    with _probe_locks_lock:
        lock = _probe_locks.setdefault(cls, threading.Lock())
    with lock:
        if cls not in _probed:
            try:
                cls.probe()
            except (EnvStartError, MissingDependencyError) as exc:
                _probed[cls] = exc
            else:
                _probed[cls] = None
        return _probed[cls]
