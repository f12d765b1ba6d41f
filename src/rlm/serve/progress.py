"""Progress as it happens: trace events summarised in one line each (as the live console
tree shows them) and a sink that hands them from the run's threads to an event loop."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from rlm.trace.events import TraceEvent

__all__ = ["Progress", "RelaySink", "summarise"]

_TEXT_CHARS = 80


def _short(text: Any, limit: int = _TEXT_CHARS) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _error_name(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("type") or "error")
    last = str(error).strip().splitlines()[-1:] or ["error"]
    return last[0].split(":", 1)[0].rsplit(".", 1)[-1] or "error"


@dataclass(frozen=True)
class Progress:
    """One step of a run: ``text`` is the line shown; the rest locates it in the tree."""

    type: str
    depth: int
    iteration: int
    run_id: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "depth": self.depth, "iteration": self.iteration,
                "run_id": self.run_id, "text": self.text}


def summarise(event: TraceEvent) -> Progress | None:
    """The line for ``event``, or ``None`` for events not worth a line.  Never the
    context, a prompt or a whole output: only sizes, counts, statuses and short heads."""
    data, d = event.data, f"d{event.depth}"
    text: str | None = None
    if event.type == "run_start":
        what = (f"«{_short(data['question'])}»" if data.get("question")
                else f"input: {data.get('context_type', '?')}")
        length = data.get("context_length")
        size = f", context {length:,} long" if isinstance(length, int) else ""
        text = f"{d} {'started' if event.depth == 0 else 'child started'}: {what}{size}"
    elif event.type == "lm_call":
        purpose = data.get("purpose", "turn")
        label = f"turn {event.iteration}" if purpose == "turn" else purpose
        if data.get("error"):
            text = f"{d} {label}: failed ({_error_name(data['error'])})"
        else:
            text = (f"{d} {label}: {data.get('input_tokens') or 0:,}→"
                    f"{data.get('output_tokens') or 0:,} tokens, "
                    f"{data.get('latency_s') or 0.0:.1f}s")
    elif event.type == "code_exec":
        status = ("final" if data.get("final") else
                  _error_name(data["error"]) if data.get("error") else "ok")
        text = f"{d} code {event.iteration}: {status}"
    elif event.type == "subcall_start":
        text = f"{d} {data.get('op', 'batch')}: {data.get('count', 0)} calls started"
    elif event.type == "subcall_end":
        failed = data.get("failed") or 0
        text = (f"{d} {data.get('op', 'batch')}: {data.get('count', 0)} calls done"
                + (f", {failed} failed" if failed else ""))
    elif event.type == "final":
        text = f"{d} {data.get('stop_reason', 'final')}: {_short(data.get('response', ''))}"
    if text is None:
        return None
    return Progress(event.type, event.depth, event.iteration, event.run_id, text)


class RelaySink:
    """A trace sink that puts each event's ``Progress`` on an asyncio queue of ``loop``,
    from whatever thread emits it; ``close()`` puts ``None`` (no more events).

    ``emit`` only schedules the put, so a slow consumer never slows the run; a closed
    loop drops the event.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Progress | None] = asyncio.Queue()

    def _put(self, item: Progress | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def emit(self, event: TraceEvent) -> None:
        try:
            progress = summarise(event)
        except (TypeError, ValueError, KeyError, AttributeError):
            return  # an event of an unexpected shape gets no line; emit must not raise
        if progress is not None:
            self._put(progress)

    def close(self) -> None:
        self._put(None)
