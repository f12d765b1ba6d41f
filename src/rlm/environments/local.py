"""The in-process environment: fast, no isolation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rlm.bridge.guest import GuestRuntime
from rlm.core.tools import Tool, in_process_tools
from rlm.environments.base import Environment, HostCall
from rlm.errors import EnvError, EnvStartError
from rlm.types import ExecResult

__all__ = ["LocalEnvironment"]


class LocalEnvironment(Environment):
    """Runs code with ``exec`` in a private namespace of the host process.

    Each block's prints are captured per execution (concurrent children never see each
    other's output); ``sys.exit``, ``KeyboardInterrupt`` and ``os._exit``/``os.kill`` of
    the process are turned into errors; rebound helper names are restored.  It is NOT a
    security boundary: code can read files, the network and the host's memory.  Use it
    for trusted models and inputs; use an isolated environment otherwise.
    ``timeout_s`` is not enforced here (a thread cannot be killed).
    """

    name = "local"
    isolation = "none (in-process exec; guards accidental exits only)"
    in_process = True

    def __init__(self, *, capture_limit: int = 2_000_000) -> None:
        self._capture_limit = capture_limit
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
        return ExecResult.from_dict(self._require().run_cell(code))

    def resolve_final_text(self, expression: str) -> str:
        return self._require().evaluate_final_text(expression)

    def close(self) -> None:
        self._closed = True
        self._runtime = None
        self._pending.clear()
