"""An OpenTelemetry trace sink: a span per node, per LM call and per code block.

``OTelSink(tracer_provider=None)`` (extra ``otel``: ``pip install 'rlm[otel]'``) turns
trace events into spans with the GenAI semantic-convention attributes, so a run shows up
in any OpenTelemetry backend: a node is an ``invoke_agent rlm`` span (parent: the node
that started it), each LM call a ``chat <model>`` span and each code block an
``execute_tool repl`` span, both children of their node.  A call's span is drawn when its
event arrives (after the call), from its recorded start (``ts - latency_s``) to its end.
Pass ``trace=OTelSink()`` to ``RLM``; the global tracer provider is used unless one is given.
"""

from __future__ import annotations

import threading
from typing import Any

from rlm.errors import MissingDependencyError
from rlm.trace.events import TraceEvent

__all__ = ["OTelSink"]

_NS = 1_000_000_000
#: The most characters of code or output put on a span attribute.
ATTRIBUTE_CHARS = 4_000


def _ns(seconds: float) -> int:
    return int(seconds * _NS)


class OTelSink:
    """Emits OpenTelemetry spans for trace events (see the module docstring); thread-safe."""

    def __init__(self, tracer_provider: Any = None) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.trace import Status, StatusCode
        except ImportError as exc:
            raise MissingDependencyError(
                "the OpenTelemetry sink needs the SDK: pip install 'rlm[otel]'") from exc
        self._trace, self._status, self._code = trace, Status, StatusCode
        provider = tracer_provider or trace.get_tracer_provider()
        self._tracer = provider.get_tracer("rlm")
        self._nodes: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _context(self, run_id: str | None) -> Any:
        span = self._nodes.get(run_id) if run_id else None
        return None if span is None else self._trace.set_span_in_context(span)

    def emit(self, event: TraceEvent) -> None:
        with self._lock:
            handler = getattr(self, f"_on_{event.type}", None)
            if handler is not None:
                handler(event, event.data)

    def _on_run_start(self, event: TraceEvent, data: dict[str, Any]) -> None:
        backend = data.get("backend") or {}
        attributes = {
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "rlm",
            "gen_ai.agent.id": event.run_id, "gen_ai.request.model": str(backend.get("model")),
            "gen_ai.provider.name": str(backend.get("backend")), "rlm.depth": event.depth,
            "rlm.context_type": str(data.get("context_type")),
        }
        if data.get("question"):
            attributes["rlm.question"] = str(data["question"])[:ATTRIBUTE_CHARS]
        self._nodes[event.run_id] = self._tracer.start_span(
            "invoke_agent rlm", context=self._context(event.parent_run_id),
            start_time=_ns(event.ts), attributes=attributes)

    def _on_lm_call(self, event: TraceEvent, data: dict[str, Any]) -> None:
        model = str(data.get("model"))
        start = event.ts - float(data.get("latency_s") or 0.0)
        span = self._tracer.start_span(
            f"chat {model}", context=self._context(event.run_id), start_time=_ns(start),
            attributes={
                "gen_ai.operation.name": "chat", "gen_ai.request.model": model,
                "gen_ai.provider.name": str(data.get("backend")),
                "gen_ai.usage.input_tokens": int(data.get("input_tokens") or 0),
                "gen_ai.usage.output_tokens": int(data.get("output_tokens") or 0),
                "rlm.cost_usd": float(data.get("cost_usd") or 0.0),
                "rlm.purpose": str(data.get("purpose")), "rlm.iteration": event.iteration,
            })
        self._finish(span, data.get("error"), event.ts)

    def _on_code_exec(self, event: TraceEvent, data: dict[str, Any]) -> None:
        start = event.ts - float(data.get("elapsed_s") or 0.0)
        span = self._tracer.start_span(
            "execute_tool repl", context=self._context(event.run_id), start_time=_ns(start),
            attributes={
                "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "repl",
                "rlm.code": str(data.get("code", ""))[:ATTRIBUTE_CHARS],
                "rlm.stdout": str(data.get("stdout", ""))[:ATTRIBUTE_CHARS],
                "rlm.iteration": event.iteration,
            })
        error = data.get("error")
        self._finish(span, {"message": str(error)[:ATTRIBUTE_CHARS]} if error else None,
                     event.ts)

    def _on_final(self, event: TraceEvent, data: dict[str, Any]) -> None:
        span = self._nodes.get(event.run_id)
        if span is not None:
            span.set_attribute("rlm.stop_reason", str(data.get("stop_reason")))
            span.set_attribute("rlm.response", str(data.get("response", ""))[:ATTRIBUTE_CHARS])

    def _on_run_end(self, event: TraceEvent, data: dict[str, Any]) -> None:
        span = self._nodes.pop(event.run_id, None)
        if span is not None:
            if "iterations" in data:
                span.set_attribute("rlm.iterations", int(data["iterations"]))
            self._finish(span, data.get("error"), event.ts)

    def _finish(self, span: Any, error: Any, end: float) -> None:
        if isinstance(error, dict):
            message = f"{error.get('type', 'error')}: {error.get('message', '')}".strip(": ")
            span.set_status(self._status(self._code.ERROR, message))
            span.set_attribute("error.type", str(error.get("type", "error")))
        span.end(end_time=_ns(end))

    def close(self) -> None:
        with self._lock:  # a node left open (the run was killed) still ends
            for span in self._nodes.values():
                span.end()
            self._nodes.clear()
