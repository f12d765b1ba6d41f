"""Trace events of remote nodes, carried back to the driver's sink as one tree.

A worker's ``RelaySink`` sends each event to the run's ``TraceRelay`` actor (one caller's
messages reach an actor in the order they were sent, so events stay in order per node)
and stamps where it ran (``data["where"]``: Ray node id, worker pid).  The driver's
``RelayDrain`` takes what arrived, every ``interval_s`` and whenever a remote child ends,
and hands it to the run's tracer, which numbers it in the driver's sequence.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

import ray

from rlm.trace.events import TraceEvent
from rlm.trace.sinks import TraceSink
from rlm.trace.tracer import Tracer

__all__ = ["RelayDrain", "RelaySink", "TraceRelay", "where"]


class TraceRelay:
    """A Ray actor (one thread: calls run in arrival order) holding events to forward."""

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []

    def put(self, events: list[dict[str, Any]]) -> int:
        self._events.extend(events)
        return len(self._events)

    def take(self) -> list[dict[str, Any]]:
        events, self._events = self._events, []
        return events


def where() -> dict[str, Any]:
    """This process's place in the cluster: Ray node id and worker pid."""
    context = ray.get_runtime_context()
    return {"node": context.get_node_id(), "pid": os.getpid()}


class RelaySink(TraceSink):
    """A worker's sink: every event goes to the relay, stamped with ``where()``."""

    def __init__(self, relay: Any) -> None:
        self._relay = relay
        self._where = where()

    def emit(self, event: TraceEvent) -> None:
        raw = event.to_dict()
        raw["data"] = {**raw["data"], "where": self._where}
        self._relay.put.remote([raw])

    def flush(self) -> None:
        """Wait until every event sent so far has reached the relay."""
        ray.get(self._relay.put.remote([]))

    def close(self) -> None:
        self.flush()


class RelayDrain:
    """The driver's side: moves relayed events into ``tracer`` (in a thread, and on
    ``drain()``), then ends the relay actor on ``close()``."""

    def __init__(self, relay: Any, tracer: Tracer, interval_s: float = 0.25) -> None:
        self.relay, self._tracer, self._interval = relay, tracer, interval_s
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rlm-trace-drain", daemon=True)
        self._thread.start()

    @classmethod
    def create(cls, tracer: Tracer) -> RelayDrain:
        actor = ray.remote(TraceRelay).options(num_cpus=0).remote()
        return cls(actor, tracer)

    def drain(self) -> None:
        with self._lock:
            try:
                events = ray.get(self.relay.take.remote())
            except ray.exceptions.RayError:
                return
            for raw in events:
                self._tracer.forward(TraceEvent.from_dict(raw))

    def _run(self) -> None:
        while not self._closed.wait(self._interval):
            self.drain()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self.drain()
        with contextlib.suppress(Exception):  # already gone with the cluster
            ray.kill(self.relay)
