"""A deterministic backend for tests, examples and benchmarks."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from rlm.backends.base import LMBackend
from rlm.errors import BadResponseError, Cancelled, ConfigError
from rlm.types import Completion, CompletionRequest, Message, estimate_tokens

__all__ = ["ScriptedBackend"]

ReplyFunction = Callable[[list[Message], int], str]


class ScriptedBackend(LMBackend):
    """Replies from a script instead of a model.

    ``responses`` is either a list of reply strings, consumed in order and shared by every
    call of the tree (root turns and sub-calls alike), or a callable
    ``responses(messages, depth) -> str``.  Each call reports ``ceil(chars / 4)`` tokens in
    and out, costs ``cost_per_call`` USD and takes ``latency_s`` seconds (interrupted early
    when the tree is cancelled).  It implements both the sync and the async interface.
    """

    name = "scripted"

    def __init__(
        self,
        responses: Sequence[str] | ReplyFunction,
        *,
        latency_s: float = 0.0,
        cost_per_call: float = 0.0,
        model: str = "scripted",
        model_name: str | None = None,
    ) -> None:
        if not callable(responses) and (
            isinstance(responses, str) or not isinstance(responses, Sequence)
        ):
            raise ConfigError("responses must be a list of strings or a callable")
        for name, value in (("latency_s", latency_s), ("cost_per_call", cost_per_call)):
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        self._responses = responses if callable(responses) else list(responses)
        self._lock = threading.Lock()
        self._next = 0
        self.latency_s = latency_s
        self.cost_per_call = cost_per_call
        self.model_name = model_name or model
        self.calls: list[CompletionRequest] = []

    def _reply(self, request: CompletionRequest) -> str:
        if callable(self._responses):
            return self._responses(request.messages, request.depth)
        with self._lock:
            if self._next >= len(self._responses):
                raise BadResponseError(
                    f"scripted backend ran out of responses after {len(self._responses)} calls"
                )
            reply = self._responses[self._next]
            self._next += 1
            return reply

    @property
    def remaining(self) -> int:
        """How many scripted replies are left (lists only)."""
        return 0 if callable(self._responses) else len(self._responses) - self._next

    def complete(self, request: CompletionRequest) -> Completion:
        started = time.monotonic()
        with self._lock:
            self.calls.append(request)
        if self.latency_s > 0:
            event = request.cancel or threading.Event()
            if event.wait(self.latency_s):
                raise Cancelled("call cancelled while waiting for the scripted reply")
        text = self._reply(request)
        return Completion(
            text=text,
            model=self.model_name,
            input_tokens=estimate_tokens(request.prompt_chars),
            output_tokens=estimate_tokens(len(text)),
            cost_usd=self.cost_per_call,
            latency_s=time.monotonic() - started,
        )

    def estimate_cost(self, request: CompletionRequest) -> float | None:
        return self.cost_per_call

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_name}
