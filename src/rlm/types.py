"""Plain value objects passed between the parts of rlm."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from rlm.trace.tree import TraceNode

__all__ = [
    "Answer",
    "Completion",
    "CompletionRequest",
    "ExecResult",
    "Message",
    "ModelUsage",
    "NodeRef",
    "RLMResult",
    "StopReason",
]

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
    to, so a backend can keep that conversation's prefix cached.
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

    @property
    def prompt_chars(self) -> int:
        return sum(len(m.get("content", "")) for m in self.messages)


@dataclass(frozen=True)
class Completion:
    """What a backend returns: the text, token counts and cost (``None`` when unknown).

    ``cached_input_tokens`` is the part of ``input_tokens`` served from a prefix cache
    (not processed again), when the backend knows it.
    """

    text: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    latency_s: float = 0.0
    cached_input_tokens: int = 0

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
        final = data.get("final")
        return cls(
            stdout=data.get("stdout", ""),
            stderr=data.get("stderr", ""),
            error=data.get("error"),
            final=None if final is None else Answer(final["text"], final["source"]),
            elapsed_s=data.get("elapsed_s", 0.0),
            notes=tuple(data.get("notes", ())),
        )


@dataclass
class RLMResult:
    """The result of ``RLM.completion()``: always this type, whatever happened.

    ``response`` is the final answer, or the best answer available when a limit stopped the
    run (``stop_reason`` says which).  ``usage`` and ``cost_usd`` cover the WHOLE call tree;
    ``trace`` is the tree of calls (``rlm.trace.TraceNode``).
    """

    response: str
    stop_reason: StopReason
    cost_usd: float
    usage: dict[str, ModelUsage]
    iterations: int
    elapsed_s: float
    trace: TraceNode
    run_id: str
    trace_path: str | None = None
    answer_source: str | None = None

    @property
    def input_tokens(self) -> int:
        return sum(u.input_tokens for u in self.usage.values())

    @property
    def output_tokens(self) -> int:
        return sum(u.output_tokens for u in self.usage.values())

    def __str__(self) -> str:
        return self.response

    def to_dict(self) -> dict[str, Any]:
        return {
            "response": self.response,
            "stop_reason": self.stop_reason,
            "cost_usd": self.cost_usd,
            "usage": {name: u.to_dict() for name, u in self.usage.items()},
            "iterations": self.iterations,
            "elapsed_s": self.elapsed_s,
            "run_id": self.run_id,
            "trace_path": self.trace_path,
            "answer_source": self.answer_source,
        }
