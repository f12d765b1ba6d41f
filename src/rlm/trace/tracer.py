"""Stamps events with a sequence number and time, and hands them to a sink."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import replace
from typing import Any

from rlm.trace.events import TraceEvent
from rlm.trace.sinks import TraceSink, redact
from rlm.types import NodeRef

__all__ = ["Tracer"]


class Tracer:
    """Shared by a whole call tree: numbers events in the order they happen.

    ``secrets`` are replaced by ``[REDACTED]`` in every event, in memory and on disk, also
    when a server echoes them transformed (case changed, spaced out, split: see
    ``rlm.trace.sinks.redact``).
    """

    def __init__(self, sink: TraceSink, *, secrets: list[str] | None = None) -> None:
        self.sink = sink
        self.secrets = [s for s in (secrets or []) if isinstance(s, str) and s]
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def emit(self, type: str, node: NodeRef, **data: Any) -> TraceEvent:
        with self._lock:
            event = TraceEvent(
                type=type,
                run_id=node.run_id,
                parent_run_id=node.parent_run_id,
                depth=node.depth,
                iteration=node.iteration,
                seq=next(self._seq),
                ts=time.time(),
                data=redact(data, self.secrets) if self.secrets else data,
            )
            self.sink.emit(event)
        return event

    def forward(self, event: TraceEvent) -> TraceEvent:
        """Pass on an event made by another tracer (a node on another machine), numbered
        in this tracer's sequence and redacted like its own."""
        with self._lock:
            event = replace(event, seq=next(self._seq), data=redact(event.data, self.secrets)
                            if self.secrets else event.data)
            self.sink.emit(event)
        return event
