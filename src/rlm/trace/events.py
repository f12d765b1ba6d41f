"""The trace event: one JSON object per line of a trace file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["EVENT_TYPES", "SCHEMA_VERSION", "TraceEvent"]

#: The trace format this rlm writes, ``"MAJOR.MINOR"`` (docs/trace-format.md, version
#: history).  A new minor version only adds fields or event types; a new major one changes
#: or removes something a reader relies on.
SCHEMA_VERSION = "1.0"

#: Every event type, in the order they usually appear for one node.
EVENT_TYPES = (
    "run_start",   # a node (the root or a child RLM) starts: question, context shape, limits
    "lm_call",     # one LM call: purpose, model, tokens, cost, latency, response text
    "code_exec",   # one code block ran: code, stdout, stderr, error, final
    "subcall_start",  # code started a batched llm_query / rlm_query
    "subcall_end",    # ... and got every slot back (count, failed, elapsed_s)
    "note",        # the loop stepped in: kind = repeat, final_with_code, answer_refused,
                   # compacted (with what it did)
    "final",       # the node's answer and stop reason
    "run_end",     # the node ends: elapsed_s, iterations, error (usage: rebuild the tree)
)


@dataclass(frozen=True)
class TraceEvent:
    """One thing that happened in a run.

    ``run_id`` names the node (one RLM loop); ``parent_run_id`` links children to their
    parent; ``seq`` orders events within a trace; ``ts`` is wall-clock seconds since the epoch.
    Everything specific to the event type is in ``data``.  ``schema_version`` is the trace
    format the event was written in (``SCHEMA_VERSION`` for new events).
    """

    type: str
    run_id: str
    parent_run_id: str | None
    depth: int
    iteration: int
    seq: int
    ts: float
    data: dict[str, Any] = field(default_factory=dict)
    schema_version: str = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "type": self.type,
            "run_id": self.run_id,
            "parent_run_id": self.parent_run_id,
            "depth": self.depth,
            "iteration": self.iteration,
            "seq": self.seq,
            "ts": self.ts,
            "data": self.data,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TraceEvent:
        return cls(
            type=raw["type"],
            run_id=raw["run_id"],
            parent_run_id=raw.get("parent_run_id"),
            depth=raw.get("depth", 0),
            iteration=raw.get("iteration", 0),
            seq=raw.get("seq", 0),
            ts=raw.get("ts", 0.0),
            data=raw.get("data", {}),
            schema_version=str(raw.get("schema_version", SCHEMA_VERSION)),
        )
