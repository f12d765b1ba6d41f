"""Rebuild the call tree from trace events (``load`` reads a JSONL trace file)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rlm.errors import RLMError
from rlm.trace.events import TraceEvent
from rlm.trace.schema import check_event
from rlm.types import ModelUsage

__all__ = ["TraceNode", "build_tree", "load", "load_all"]


@dataclass
class TraceNode:
    """One RLM node (the root or a child started by ``rlm_query``) and its subtree."""

    run_id: str
    parent_run_id: str | None
    depth: int
    events: list[TraceEvent] = field(default_factory=list)
    children: list[TraceNode] = field(default_factory=list)

    def _first(self, kind: str) -> TraceEvent | None:
        return next((e for e in self.events if e.type == kind), None)

    def _of(self, kind: str) -> list[TraceEvent]:
        return [e for e in self.events if e.type == kind]

    @property
    def start(self) -> TraceEvent | None:
        return self._first("run_start")

    @property
    def end(self) -> TraceEvent | None:
        return self._first("run_end")

    @property
    def question(self) -> str | None:
        start = self.start
        return None if start is None else start.data.get("question")

    @property
    def lm_calls(self) -> list[TraceEvent]:
        """Every LM call made by this node: its own turns and its plain sub-calls."""
        return self._of("lm_call")

    @property
    def code_executions(self) -> list[TraceEvent]:
        return self._of("code_exec")

    @property
    def response(self) -> str | None:
        final = self._first("final")
        return None if final is None else final.data.get("response")

    @property
    def stop_reason(self) -> str | None:
        final = self._first("final")
        return None if final is None else final.data.get("stop_reason")

    @property
    def iterations(self) -> int:
        return max((e.iteration for e in self.events), default=0)

    @property
    def elapsed_s(self) -> float | None:
        start, end = self.start, self.end
        return None if start is None or end is None else end.ts - start.ts

    @property
    def own_usage(self) -> dict[str, ModelUsage]:
        """Usage of the LM calls this node made itself (children excluded)."""
        usage: dict[str, ModelUsage] = {}
        for call in self.lm_calls:
            d = call.data
            _add_usage(usage, d.get("usage_key") or d.get("model", "?"), ModelUsage(
                calls=1, input_tokens=d.get("input_tokens", 0),
                output_tokens=d.get("output_tokens", 0), cost_usd=d.get("cost_usd") or 0.0))
        return usage

    @property
    def usage(self) -> dict[str, ModelUsage]:
        """Usage of this node's whole subtree, per model."""
        total: dict[str, ModelUsage] = {}
        for node in self.walk():
            for key, usage in node.own_usage.items():
                _add_usage(total, key, usage)
        return total

    @property
    def cost_usd(self) -> float:
        return sum(u.cost_usd for u in self.usage.values())

    def walk(self) -> Iterator[TraceNode]:
        """This node then every descendant, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()

    def find(self, run_id: str) -> TraceNode | None:
        return next((n for n in self.walk() if n.run_id == run_id), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "parent_run_id": self.parent_run_id,
            "depth": self.depth,
            "events": [e.to_dict() for e in self.events],
            "children": [c.to_dict() for c in self.children],
        }


def _add_usage(total: dict[str, ModelUsage], key: str, usage: ModelUsage) -> None:
    """Add ``usage`` into ``total[key]``, every field of ``ModelUsage``."""
    into = total.setdefault(key, ModelUsage())
    for name in (f.name for f in fields(ModelUsage)):
        setattr(into, name, getattr(into, name) + getattr(usage, name))


def build_tree(events: Iterable[TraceEvent]) -> list[TraceNode]:
    """Group events by ``run_id`` and link nodes to their parents; return the roots."""
    nodes: dict[str, TraceNode] = {}
    order: list[str] = []
    for event in sorted(events, key=lambda e: e.seq):
        node = nodes.get(event.run_id)
        if node is None:
            node = nodes[event.run_id] = TraceNode(event.run_id, event.parent_run_id, event.depth)
            order.append(event.run_id)
        node.events.append(event)
    roots = []
    for run_id in order:
        node = nodes[run_id]
        parent = nodes.get(node.parent_run_id) if node.parent_run_id else None
        (parent.children if parent else roots).append(node)
    return roots


def _read(path: str | Path) -> Iterator[TraceEvent]:
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except ValueError as exc:
                raise RLMError(f"{path}:{number}: not a trace event ({exc})") from exc
            check_event(raw, f"{path}:{number}")
            yield TraceEvent.from_dict(raw)


def load_all(path: str | Path) -> list[TraceNode]:
    """Every root call recorded in a JSONL trace file (a file may hold several runs).

    Each line is checked (``rlm.trace.schema``): ``RLMError`` names the line that is not
    an event this rlm reads, or says the file is from a newer major schema version."""
    return build_tree(_read(path))


def load(path: str | Path) -> TraceNode:
    """The call tree of the last root run recorded in a JSONL trace file."""
    roots = load_all(path)
    if not roots:
        raise RLMError(f"{path}: the trace file holds no events")
    return roots[-1]
