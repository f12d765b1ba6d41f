"""Plain value objects passed between the parts of rlm."""

from __future__ import annotations

import functools
import math
import numbers
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from rlm.errors import BadResponseError

__all__ = [
    "MAX_COST_PER_CALL_USD",
    "MAX_TOKENS_PER_CALL",
    "Answer",
    "Completion",
    "CompletionRequest",
    "ExecResult",
    "HostCall",
    "Message",
    "ModelUsage",
    "NodeRef",
    "StopReason",
    "check_usage",
    "estimate_tokens",
]

HostCall = Callable[[dict[str, Any]], dict[str, Any]]
"""Sends one REPL request (``llm_query``, ``rlm_query``, ``budget``...) to the host's LM
handler and returns its reply; see ``rlm.bridge.guest`` for the messages."""

Message = dict[str, str]
"""A chat message: ``{"role": "system" | "user" | "assistant", "content": "..."}``."""

StopReason = Literal[
    "final", "max_iterations", "budget", "timeout", "tokens", "errors", "cancelled", "error"
]
"""Why a run ended.  ``"error"`` appears only on ``exc.partial`` of a run that raised."""


@dataclass
class NodeRef:
    """Where a call comes from: one RLM node of the tree and its current iteration."""

    run_id: str
    parent_run_id: str | None
    depth: int
    iteration: int = 0


@dataclass(frozen=True)
class CompletionRequest:
    """One call to a language model.

    ``depth`` is the depth of the call in the RLM tree (0 for the root's own turns);
    ``timeout_s`` is what is left of the run's time limit; ``cancel`` is set when the tree
    is stopping, so backends that can abort early should watch it.  ``purpose`` is
    ``"turn"`` (a node's next REPL reply), ``"extract"`` (the last-resort answer) or
    ``"query"`` (a one-shot sub-call); ``cache_key`` names the conversation a turn belongs
    to, so a backend can keep that conversation's prefix cached.  ``response_schema`` is a
    JSON Schema the reply must match (a typed sub-call): backends that can enforce it
    (a grammar, a provider's structured-output mode) do; the handler validates every reply.
    """

    messages: list[Message]
    model: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    stop: list[str] | None = None
    depth: int = 0
    timeout_s: float | None = None
    cancel: threading.Event | None = field(default=None, compare=False, repr=False)
    grammar: str | None = None
    purpose: str = "query"
    cache_key: str | None = None
    response_schema: dict[str, Any] | None = field(default=None, compare=False)

    @functools.cached_property
    def prompt_chars(self) -> int:
        """Characters of every message's content (counted once per request)."""
        return sum(len(m.get("content", "")) for m in self.messages)


#: The most tokens (of each kind) one LM call may report; more is a bad usage report.
MAX_TOKENS_PER_CALL = 10**9
#: The most USD one LM call may report; more is a bad usage report.
MAX_COST_PER_CALL_USD = 1e6


def _shown(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 40 else text[:37] + "..."


def _bad(model: str, name: str, value: Any, rule: str) -> BadResponseError:
    return BadResponseError(
        f"model {_shown(model)} reported an impossible usage: {name}={_shown(value)} ({rule}); "
        "the call is not charged and its reply is dropped"
    )


def _token_count(model: str, name: str, value: Any) -> int:
    rule = f"must be a whole number from 0 to {MAX_TOKENS_PER_CALL:,}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _bad(model, name, value, rule)
    if isinstance(value, numbers.Integral):
        count = int(value)
    else:
        number = float(value)
        if not math.isfinite(number) or not number.is_integer():
            raise _bad(model, name, value, rule)
        count = int(number)
    if not 0 <= count <= MAX_TOKENS_PER_CALL:
        raise _bad(model, name, value, rule)
    return count


def _cost(model: str, value: Any) -> float | None:
    if value is None:
        return None
    rule = f"must be a finite number of USD from 0 to {MAX_COST_PER_CALL_USD:g}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _bad(model, "cost_usd", value, rule)
    try:
        cost = float(value)
    except (OverflowError, ValueError):
        raise _bad(model, "cost_usd", value, rule) from None
    if not (math.isfinite(cost) and 0.0 <= cost <= MAX_COST_PER_CALL_USD):
        raise _bad(model, "cost_usd", value, rule)
    return cost


def check_usage(completion: Completion) -> None:
    """Raise ``BadResponseError`` unless the usage of ``completion`` is possible.

    Possible means: token counts are whole numbers from 0 to ``MAX_TOKENS_PER_CALL`` and
    ``cost_usd`` is ``None`` or a finite number from 0 to ``MAX_COST_PER_CALL_USD``.
    ``Completion`` runs this when it is built and ``Budget.commit`` again before charging.
    """
    model = completion.model if isinstance(completion.model, str) else "?"
    for name in ("input_tokens", "output_tokens", "cached_input_tokens"):
        _token_count(model, name, getattr(completion, name))
    _cost(model, completion.cost_usd)


@dataclass(frozen=True)
class Completion:
    """What a backend returns: the text, token counts and cost (``None`` when unknown).

    ``cached_input_tokens`` is the part of ``input_tokens`` served from a prefix cache
    (not processed again), when the backend knows it.

    Usage is checked when a ``Completion`` is built, so every backend (third-party ones
    too) is covered: token counts must be whole numbers from 0 to ``MAX_TOKENS_PER_CALL``
    (``12.0`` is taken as ``12``) and ``cost_usd`` ``None`` or a finite number from 0 to
    ``MAX_COST_PER_CALL_USD``.  Anything else (negative, NaN, infinite, absurdly large, not
    a number) raises ``rlm.BadResponseError``: a call that reports impossible usage fails
    like a malformed response, is not charged, and can never lower what the tree has spent.
    """

    text: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    latency_s: float = 0.0
    cached_input_tokens: int = 0

    def __post_init__(self) -> None:
        model = self.model if isinstance(self.model, str) else "?"
        for name in ("input_tokens", "output_tokens", "cached_input_tokens"):
            object.__setattr__(self, name, _token_count(model, name, getattr(self, name)))
        object.__setattr__(self, "cost_usd", _cost(model, self.cost_usd))

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class ModelUsage:
    """Usage of one model summed over a whole call tree."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, completion: Completion) -> None:
        self.calls += 1
        self.input_tokens += completion.input_tokens
        self.output_tokens += completion.output_tokens
        self.cost_usd += completion.cost_usd or 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelUsage:
        return cls(**{k: data[k] for k in ("calls", "input_tokens", "output_tokens", "cost_usd")})


@dataclass(frozen=True)
class Answer:
    """A final answer given by the model, with how it was given.

    ``source`` is ``"FINAL"`` or ``"FINAL_VAR"`` (called in code), ``"text"`` (a ``FINAL(...)``
    line written outside code) or ``"extract"`` (the last-resort call when iterations ran out).
    """

    text: str
    source: Literal["FINAL", "FINAL_VAR", "text", "extract"] = "FINAL"


@dataclass(frozen=True)
class ExecResult:
    """The outcome of running one code block in an environment.

    ``error`` is the formatted exception of the model's code (``None`` when it ran cleanly);
    ``final`` is set when the block called ``FINAL`` or ``FINAL_VAR``; ``notes`` are messages
    from the scaffold itself (for example that a reserved name was restored).
    """

    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    final: Answer | None = None
    elapsed_s: float = 0.0
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "stdout": self.stdout,
            "stderr": self.stderr,
            "error": self.error,
            "final": None if self.final is None else {
                "text": self.final.text, "source": self.final.source
            },
            "elapsed_s": self.elapsed_s,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExecResult:
        """Decode a result sent by a REPL; ``ValueError`` when it is malformed (a REPL is
        untrusted: model code may forge its frames)."""
        def text(key: str, *, optional: bool = False) -> Any:
            value = data.get(key, None if optional else "")
            if not isinstance(value, str) and not (optional and value is None):
                raise ValueError(f"malformed REPL result: {key!r} is {type(value).__name__}")
            return value

        if not isinstance(data, dict):
            raise ValueError("malformed REPL result: not an object")
        final = data.get("final")
        if final is not None and not (
                isinstance(final, dict) and isinstance(final.get("text"), str)
                and final.get("source") in ("FINAL", "FINAL_VAR")):
            raise ValueError("malformed REPL result: 'final' must be {text, source}")
        elapsed = data.get("elapsed_s", 0.0)
        notes = data.get("notes", ())
        if isinstance(elapsed, bool) or not isinstance(elapsed, int | float) or \
                not 0 <= elapsed < float("inf"):
            raise ValueError("malformed REPL result: 'elapsed_s' must be a number >= 0")
        if not isinstance(notes, list | tuple) or not all(isinstance(n, str) for n in notes):
            raise ValueError("malformed REPL result: 'notes' must be a list of strings")
        return cls(
            stdout=text("stdout"), stderr=text("stderr"), error=text("error", optional=True),
            final=None if final is None else Answer(final["text"], final["source"]),
            elapsed_s=float(elapsed), notes=tuple(notes),
        )


def estimate_tokens(chars: int) -> int:
    """A rough token count for ``chars`` characters of text (4 characters per token)."""
    return math.ceil(chars / 4)
