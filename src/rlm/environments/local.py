"""The in-process environment: fast, no isolation."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rlm.bridge import protocol
from rlm.bridge.guest import GuestRuntime
from rlm.environments.base import Environment
from rlm.environments.cells import CellThread
from rlm.errors import EnvError, EnvStartError
from rlm.tools import Tool, in_process_tools
from rlm.types import ExecResult, HostCall

__all__ = ["LocalEnvironment"]


class LocalEnvironment(Environment):
    """Runs code with ``exec`` in a private namespace of the host process.

    Each block's prints are captured per execution (concurrent children never see each
    other's output); ``sys.exit``, ``KeyboardInterrupt`` and ``os._exit``/``os.kill`` of
    the process are turned into errors; rebound helper names are restored.  It is NOT a
    security boundary: code can read files, the network and the host's memory.  Use it
    for trusted models and inputs; use an isolated environment otherwise.

    Blocks run in a thread of the REPL's own (``rlm.environments.cells``), so a block past
    ``block_timeout_s`` (or the time it is given), or one running when the call tree stops
    (``interrupt``), gets ``BlockStopped`` raised in it and ends with an error; the
    variables are kept.  A block stuck in one long C call stops only when the call
    returns (its thread is left behind after ``interrupt_grace_s``).  When the environment
    closes, code still running in threads it started can no longer reach the LM handler.
    """

    name = "local"
    isolation = "none (in-process exec; guards accidental exits only)"
    in_process = True
    supports_timeout = True

    def __init__(self, *, capture_limit: int = protocol.CAPTURE_LIMIT,
                 block_timeout_s: float = 300.0, interrupt_grace_s: float = 2.0) -> None:
        self._capture_limit = capture_limit
        self.block_timeout_s = block_timeout_s
        self._cells = CellThread(grace_s=interrupt_grace_s)
        self._runtime: GuestRuntime | None = None
        self._pending: dict[str, Any] = {}
        self._closed = False

    def start(self, call: HostCall, tools: Mapping[str, Tool] | None = None) -> None:
        if self._runtime is not None:
            return
        if self._closed:
            raise EnvError("the environment is closed")
        functions, sources = in_process_tools(tools)
        runtime = GuestRuntime(call, tools=functions, capture_limit=self._capture_limit)
        try:
            runtime.load_tools(sources)
        except RuntimeError as exc:
            raise EnvStartError(f"{self.name}: {exc}") from None
        self._runtime = runtime
        for name, value in self._pending.items():
            self._runtime.set_variable(name, value)
        self._pending.clear()

    def _require(self) -> GuestRuntime:
        if self._runtime is None:
            raise EnvError("the environment is not started")
        return self._runtime

    def set_variable(self, name: str, value: Any) -> None:
        if self._runtime is None:
            self._pending[name] = value
        else:
            self._runtime.set_variable(name, value)

    def get_variable(self, name: str) -> Any:
        return self._require().namespace[name]

    def execute(self, code: str, *, timeout_s: float | None = None) -> ExecResult:
        runtime = self._require()
        limit = self.block_timeout_s if timeout_s is None else min(timeout_s, self.block_timeout_s)
        started = time.monotonic()
        outcome = self._cells.run(lambda: runtime.run_cell(code), limit)
        if outcome.stopped is None:
            if outcome.error is not None:  # the scaffold itself failed
                raise EnvError(f"{self.name}: {type(outcome.error).__name__}: {outcome.error}")
            return ExecResult.from_dict(outcome.value)
        why = (f"{protocol.timed_out(limit)} and was stopped" if outcome.stopped == "timeout"
               else protocol.CANCELLED)
        if outcome.abandoned:
            why += " (it was stuck in a call that cannot be interrupted and goes on alone)"
        partial = outcome.value if isinstance(outcome.value, dict) else {}
        return ExecResult(stdout=partial.get("stdout", ""), stderr=partial.get("stderr", ""),
                          error=f"{why}; {protocol.KEPT}",
                          elapsed_s=time.monotonic() - started)

    def interrupt(self) -> None:
        self._cells.interrupt()

    def close(self) -> None:
        self._closed = True
        if self._runtime is not None:  # threads of model code: no more LM calls
            self._runtime.disconnect()
        self._cells.close()
        self._runtime = None
        self._pending.clear()
