"""REPL state kept across calls, and the guarded calls every environment operation goes
through (``env_call``, ``checked_result``): the engine's one boundary with environments."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from rlm.bridge.protocol import error_reply
from rlm.environments.base import Environment
from rlm.errors import EnvError, RLMError
from rlm.types import Answer, ExecResult, HostCall

__all__ = ["Session", "checked_result", "env_call"]


class Session:
    """REPL state kept across ``completion()`` calls (``RLM(persistent=True)``).

    The environment stays open; each call adds ``context_<n>`` and appends
    ``{"question", "answer"}`` to ``history`` (``record``).  A run ``enter``s the session
    (the REPL then reaches that run's LM handler through ``dispatch``) and ``leave``s it.
    """

    def __init__(self, environment: Environment, owned: bool) -> None:
        self.environment, self.owned, self.turn = environment, owned, 0
        self.history: list[dict[str, str]] = []
        self._target: HostCall | None = None
        self.lock = threading.Lock()

    def enter(self, target: HostCall) -> None:
        """Route the REPL's requests to ``target`` (the LM handler of the run under way)."""
        self._target = target

    def leave(self) -> None:
        """The run under way has ended: the REPL's requests are refused until the next."""
        self._target = None

    def record(self, question: str | None, answer: str) -> None:
        """Append a finished call to ``history``, in the REPL too."""
        self.history.append({"question": question or "", "answer": answer})
        self.turn += 1
        env_call(self.environment, "set_variable", self.environment.set_variable, "history",
                  list(self.history))

    def dispatch(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one REPL request to the run under way (refused when none is)."""
        if self._target is None:
            return error_reply("Cancelled", "no completion is running")
        return self._target(message)

    def close(self) -> None:
        if self.owned:
            self.environment.close()


#: Exceptions that are not failures of the run: they pass through ``env_call`` unchanged.
_PASS_THROUGH = (RLMError, KeyboardInterrupt, asyncio.CancelledError, GeneratorExit)


def env_call(env: Environment, what: str, operation: Callable[..., Any], *args: Any,
              **kwargs: Any) -> Any:
    """Run one operation of ``env``; a non-rlm exception comes out as an ``EnvError``."""
    try:
        return operation(*args, **kwargs)
    except _PASS_THROUGH:
        raise
    except BaseException as exc:  # a dead REPL, a bad frame, even SystemExit
        name = getattr(env, "name", type(env).__name__)
        raise EnvError(f"the {name} environment failed in {what}: "
                       f"{type(exc).__name__}: {exc}") from exc


def checked_result(env: Environment, result: Any) -> ExecResult:
    """``result`` when it is a well-formed ``ExecResult``, else an ``EnvError``."""
    final = getattr(result, "final", None)
    if (isinstance(result, ExecResult) and isinstance(result.stdout, str)
            and isinstance(result.stderr, str) and isinstance(result.error, str | None)
            and (final is None or (isinstance(final, Answer) and isinstance(final.text, str)))
            and all(isinstance(note, str) for note in result.notes)
            and isinstance(result.elapsed_s, int | float)):
        return result
    name = getattr(env, "name", type(env).__name__)
    raise EnvError(f"the {name} environment returned a malformed block result: "
                   f"{result!r:.200}")
