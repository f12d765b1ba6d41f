"""``stream: true``: one run as server-sent events in the OpenAI chunk format.

The first chunk opens the assistant message; each progress line (``rlm.serve.progress``)
follows as a chunk whose ``delta.reasoning_content`` holds the line (shown by chat UIs
that show reasoning, ignored by the others) and whose ``rlm.progress`` holds it
structured; then the answer as ``delta.content`` pieces, a chunk with the
``finish_reason``, and a last chunk with no choices that carries ``usage`` and the ``rlm``
object; then ``data: [DONE]``.  A comment line goes out every ``KEEPALIVE_S`` while the
run is silent.  A client that disconnects cancels its run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from rlm.errors import RLMError
from rlm.result import RLMResult
from rlm.serve import chat
from rlm.serve.guard import run_refusal
from rlm.serve.progress import RelaySink
from rlm.serve.service import Service, Ticket

__all__ = ["ANSWER_PIECE_CHARS", "KEEPALIVE_S", "RunStream"]

_log = logging.getLogger("rlm.serve")
KEEPALIVE_S = 2.0
ANSWER_PIECE_CHARS = 512


class _Gone(Exception):
    """The client closed the connection."""


def _event(body: Any) -> bytes:
    return f"data: {json.dumps(body, ensure_ascii=False, default=str)}\n\n".encode()


class RunStream(Response):
    """The response of a streamed chat completion: runs the admitted ``ticket``."""

    media_type = "text/event-stream"

    def __init__(self, service: Service, ticket: Ticket, question: str, context: Any, *,
                 request_id: str, model: str, created: int,
                 temperature: float | None = None) -> None:
        # not Response.__init__: it would declare a Content-Length
        self.status_code, self.background = 200, None
        self.raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8"),
                            (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        self.service, self.ticket = service, ticket
        self.question, self.context, self.temperature = question, context, temperature
        self.request_id, self.model, self.created = request_id, model, created

    def _chunk(self, **fields: Any) -> bytes:
        return _event(chat.chunk(self.request_id, self.model, self.created, **fields))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = RelaySink(asyncio.get_running_loop())
        outcome: dict[str, Any] = {}
        finished = anyio.Event()

        async def write(data: bytes) -> None:
            try:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            except OSError as exc:  # uvicorn: the client is gone
                raise _Gone() from exc

        async def watch(scope: anyio.CancelScope) -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            outcome["gone"] = True
            scope.cancel()

        async def run() -> None:
            try:
                outcome["result"] = await self.service.run(
                    self.ticket, self.question, self.context, sinks=[relay],
                    temperature=self.temperature)
            except RLMError as exc:
                outcome["error"] = exc
            finally:
                relay.queue.put_nowait(None)  # also when the run never opened the sink
                finished.set()

        async def pump(scope: anyio.CancelScope) -> None:
            try:
                await write(self._chunk(delta={"role": "assistant", "content": ""}))
                while (item := await self._next(relay, write)) is not None:
                    await write(self._chunk(delta={"reasoning_content": item.text + "\n"},
                                            rlm={"progress": item.to_dict()}))
                await finished.wait()
                await self._finish(outcome, write)
            except _Gone:
                outcome["gone"] = True
            scope.cancel()

        await send({"type": "http.response.start", "status": 200,
                    "headers": self.raw_headers})
        async with anyio.create_task_group() as group:
            group.start_soon(watch, group.cancel_scope)
            group.start_soon(pump, group.cancel_scope)
            group.start_soon(run)
        if outcome.get("gone"):
            _log.info("%s: client disconnected; run cancelled", self.request_id)
            return
        with contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _next(relay: RelaySink, write: Any) -> Any:
        """The next progress item, sending keep-alive comments while none comes."""
        while True:
            with anyio.move_on_after(KEEPALIVE_S):
                return await relay.queue.get()
            await write(b": keepalive\n\n")

    async def _finish(self, outcome: dict[str, Any], write: Any) -> None:
        error = outcome.get("error")
        if error is not None:
            await write(_event(chat.error_body(run_refusal(error))))
            await write(b"data: [DONE]\n\n")
            return
        result: RLMResult = outcome["result"]
        text = result.response
        for start in range(0, len(text), ANSWER_PIECE_CHARS):
            await write(self._chunk(delta={"content": text[start:start + ANSWER_PIECE_CHARS]}))
        await write(self._chunk(delta={}, finish=chat.finish_reason(result.stop_reason)))
        trace_id = self.ticket.trace_id if self.service.config.trace_dir is not None else None
        await write(self._chunk(usage=chat.usage_body(result),
                                rlm=chat.rlm_extension(result, trace_id, self.ticket.limits)))
        await write(b"data: [DONE]\n\n")
        _log.info("%s: %s (streamed), $%.4f, %.2fs", self.request_id, result.stop_reason,
                  result.cost_usd, result.elapsed_s)
