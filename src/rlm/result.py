"""The value ``RLM.completion()`` returns: the answer, usage, cost and the tree of calls."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

from rlm.trace.tree import TraceNode
from rlm.types import ModelUsage, StopReason

__all__ = ["RLMResult"]


@dataclass
class RLMResult:
    """The result of ``RLM.completion()``: always this type, whatever happened.

    ``response`` is the final answer, or the best answer available when a limit stopped the
    run (``stop_reason`` says which).  ``usage`` and ``cost_usd`` cover the WHOLE call tree;
    ``trace`` is the tree of calls (``rlm.trace.TraceNode``).  ``output`` is the answer
    parsed and validated against ``completion(..., schema=...)`` (a pydantic model instance
    or the parsed JSON; ``None`` without a schema); when the final answer does not match
    (the run stopped on a limit, say), ``output`` is ``None`` and ``output_error`` says
    why.  ``evidence`` lists where the answer came
    from: the code outputs of the root node that contain it, or the block that computed it
    (``{"iteration", "kind", "excerpt"}``).
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
    output: Any = None
    evidence: list[dict[str, Any]] = field(default_factory=list)
    output_error: str | None = None
    #: Why this completion failed, when it did not run to an answer (``RLM.batch`` keeps
    #: going past a failed item and gives it ``stop_reason="error"`` and this message).
    error: str | None = None
    #: Where it ran when it ran on a cluster: ``{"node": Ray node id, "pid": worker pid}``.
    placement: dict[str, Any] | None = None

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
            "evidence": list(self.evidence),
            "output": _jsonable(self.output),
            "output_error": self.output_error,
            "error": self.error,
            "placement": self.placement,
        }


def _jsonable(value: Any) -> Any:
    """``output`` as JSON: a pydantic model dumped, a dataclass as a dict, a tuple as a list."""
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        return dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return value.value if isinstance(value, enum.Enum) else value
