"""A scriptable OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benchmarks.

Usage::

    with FakeOpenAIServer(reply="hello", latency_s=0.0) as fake:
        fake.enqueue(status=429, headers={"Retry-After": "0.01"}, times=2)  # then the reply
        backend = OpenAIBackend(model="fake", base_url=fake.url)
        ...
        assert fake.requests[-1].body["model"] == "fake"

API:

- ``FakeOpenAIServer(reply=..., latency_s=..., usage=True, model="fake",
  refuse_response_format=False)``: ``reply`` is a string or a function ``reply(body) -> str``
  of the request JSON (which holds ``response_format`` when the client sent one); it answers
  every request that no enqueued response claims.  ``latency_s`` delays every answer.
  ``refuse_response_format=True`` plays a server without structured output: a request with
  a ``response_format`` gets HTTP 400 naming it (as vLLM or an old llama.cpp server do).
- ``.url``: the base URL to give a backend (``http://127.0.0.1:PORT/v1``).
- ``.enqueue(text=None, *, status=200, headers=None, body=None, delay_s=0.0, usage=True,
  drop=False, times=1)``: script the next answers, consumed first in first out.  ``text``
  replaces the reply; ``status`` >= 400 sends an OpenAI-style error; ``body`` (str, bytes or
  JSON value) is sent verbatim; ``usage`` is ``True`` (4 characters per token), ``False``
  (no usage field), ``(prompt_tokens, completion_tokens)`` (any JSON values, hostile ones
  too: ``float("nan")`` and ``float("inf")`` go out as ``NaN`` and ``Infinity``) or a dict
  sent verbatim as the ``usage`` object (for fields such as ``cost``); ``drop=True`` closes
  the connection without answering.
- ``.refuse_each_once(retry_after="0.5")``: from now on, the first request of each distinct
  body gets HTTP 429 with that ``Retry-After`` (a rate-limited provider); its retry (the
  same body) is answered as usual.
- ``POST /v1/responses`` speaks the Responses API: ``input`` (a string or messages) and
  ``instructions`` in, ``output`` (a ``message`` with ``output_text``) and usage with
  ``input_tokens`` / ``output_tokens`` out; ``reasoning_tokens=N`` adds N reasoning tokens
  to every reply (in ``output_tokens`` and ``output_tokens_details``, as OpenAI does).
- ``.requests``: every ``RecordedRequest`` received (path, lower-cased headers, JSON body);
  ``.response_formats``: the ``response_format`` of each request (``None`` where absent).
- ``.start()`` / ``.stop()`` or ``with``: ``stop`` interrupts pending delays, closes every
  open connection and joins the server threads.
- ``python -m tests.fakes.openai_server REPLY...``: the server in a process of its own, for
  tests that kill it (see ``main``).
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.loopback import FakeHTTPServer, LoopbackService, PostHandler, send_json

__all__ = ["FakeOpenAIServer", "RecordedRequest", "ScriptedResponse", "main"]

ReplyFunction = Callable[[dict[str, Any]], str]
Usage = bool | tuple[Any, Any] | dict[str, Any]


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received."""

    path: str
    headers: dict[str, str]
    body: Any
    received_at: float


@dataclass
class ScriptedResponse:
    """One enqueued answer (see ``FakeOpenAIServer.enqueue``)."""

    text: str | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    delay_s: float = 0.0
    usage: Usage = True
    drop: bool = False


class _Handler(PostHandler):
    def do_GET(self) -> None:
        self.server.fake._send(self, 404, {"error": {"message": "not found"}}, {})


class FakeOpenAIServer(LoopbackService):
    """A real HTTP server in a thread that answers ``POST /v1/chat/completions``."""

    label = "fake server"
    thread_name = "fake-openai-server"

    def __init__(self, reply: str | ReplyFunction = "ok", *, latency_s: float = 0.0,
                 usage: Usage = True, model: str = "fake",
                 refuse_response_format: bool = False) -> None:
        super().__init__()
        self.refuse_response_format = refuse_response_format
        self.reply = reply
        self.latency_s = latency_s
        self.usage = usage
        self.model = model
        self.requests: list[RecordedRequest] = []
        self._queue: deque[ScriptedResponse] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._refuse_once: str | None = None
        self._refused: set[bytes] = set()
        self.reasoning_tokens = 0

    def refuse_each_once(self, retry_after: str = "0.5") -> None:
        """Answer the first request of each distinct body with 429 + ``Retry-After``."""
        with self._lock:
            self._refuse_once = retry_after

    # -- lifecycle (``LoopbackService``) ----------------------------------------------------
    def _make_server(self) -> FakeHTTPServer:
        return FakeHTTPServer(self, _Handler)

    def _opening(self) -> None:
        self._stopping.clear()

    def _closing(self) -> None:
        self._stopping.set()  # ends the answers still waiting out a delay

    # -- scripting --------------------------------------------------------------------------
    def enqueue(self, text: str | None = None, *, status: int = 200,
                headers: dict[str, str] | None = None, body: Any = None, delay_s: float = 0.0,
                usage: Usage = True, drop: bool = False,
                times: int = 1) -> None:
        """Script the next ``times`` answers (consumed before the default ``reply``)."""
        with self._lock:
            for _ in range(times):
                self._queue.append(ScriptedResponse(text, status, dict(headers or {}), body,
                                                    delay_s, usage, drop))

    @property
    def pending(self) -> int:
        """How many enqueued answers are left."""
        with self._lock:
            return len(self._queue)

    @property
    def response_formats(self) -> list[Any]:
        """The ``response_format`` of every request received, ``None`` where it had none."""
        with self._lock:
            return [r.body.get("response_format") if isinstance(r.body, dict) else None
                    for r in self.requests]

    def reset(self) -> None:
        """Forget recorded requests and enqueued answers."""
        with self._lock:
            self.requests.clear()
            self._queue.clear()

    # -- serving ----------------------------------------------------------------------------
    def _serve(self, handler: _Handler, raw: bytes) -> None:
        try:
            body: Any = json.loads(raw or b"null")
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self._lock:
            self.requests.append(RecordedRequest(handler.path, headers, body, time.time()))
            scripted = self._queue.popleft() if self._queue else ScriptedResponse(
                usage=self.usage)
            if self._refuse_once is not None and raw not in self._refused:
                self._refused.add(raw)
                scripted = ScriptedResponse(status=429,
                                            headers={"Retry-After": self._refuse_once})
        delay = self.latency_s + scripted.delay_s
        if delay > 0 and self._stopping.wait(delay):
            handler.close_connection = True
            return
        if scripted.drop:
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if handler.path.rstrip("/") == "/v1/responses" and scripted.status < 400 \
                and scripted.body is None:
            self._send(handler, 200, self._response(body, scripted), scripted.headers)
        elif handler.path.rstrip("/") not in ("/v1/chat/completions", "/v1/responses"):
            self._send(handler, 404, {"error": {"message": f"no route {handler.path}"}}, {})
        elif scripted.body is not None:
            self._send(handler, scripted.status, scripted.body, scripted.headers)
        elif scripted.status >= 400:
            error = {"message": f"fake error {scripted.status}", "type": "fake_error"}
            self._send(handler, scripted.status, {"error": error}, scripted.headers)
        elif not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self._send(handler, 400, {"error": {"message": "expected a JSON body"}}, {})
        elif self.refuse_response_format and "response_format" in body:
            error = {"message": "response_format of type json_schema is not supported",
                     "type": "invalid_request_error", "param": "response_format"}
            self._send(handler, 400, {"error": error}, {})
        else:
            text = scripted.text if scripted.text is not None else self._default_reply(body)
            self._send(handler, 200, self._completion(body, text, scripted.usage),
                       scripted.headers)

    def _default_reply(self, body: dict[str, Any]) -> str:
        return self.reply(body) if callable(self.reply) else self.reply

    def _completion(self, body: dict[str, Any], text: str,
                    usage: Usage) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": f"chatcmpl-fake-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
        }
        if usage is True:
            chars = sum(len(m.get("content") or "") for m in body["messages"])
            usage = (math.ceil(chars / 4), math.ceil(len(text) / 4))
        if isinstance(usage, dict):
            data["usage"] = usage
        elif usage:
            data["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1]}
            with contextlib.suppress(TypeError):
                data["usage"]["total_tokens"] = usage[0] + usage[1]
        return data

    def _response(self, body: Any, scripted: ScriptedResponse) -> dict[str, Any]:
        """A Responses API reply (``POST /v1/responses``) to ``body``."""
        body = body if isinstance(body, dict) else {}
        given = body.get("input")
        messages = [{"role": "user", "content": given}] if isinstance(given, str) \
            else [m for m in given or [] if isinstance(m, dict)]
        if body.get("instructions"):
            messages = [{"role": "system", "content": body["instructions"]}, *messages]
        text = scripted.text if scripted.text is not None \
            else self._default_reply({**body, "messages": messages})
        chars = sum(len(str(m.get("content") or "")) for m in messages)
        data: dict[str, Any] = {
            "id": f"resp-fake-{len(self.requests)}", "object": "response",
            "model": body.get("model") or self.model, "status": "completed",
            "output": [{"type": "reasoning", "id": "rs-fake", "summary": []},
                       {"type": "message", "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": text,
                                     "annotations": []}]}]}
        if scripted.usage:
            out = math.ceil(len(text) / 4) + self.reasoning_tokens
            data["usage"] = {
                "input_tokens": math.ceil(chars / 4), "output_tokens": out,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
                "total_tokens": math.ceil(chars / 4) + out}
        return data

    @staticmethod
    def _send(handler: _Handler, status: int, body: Any, headers: dict[str, str]) -> None:
        send_json(handler, status, body, headers)


def main(argv: list[str] | None = None) -> None:
    """Serve from a process of its own, for tests that kill the provider: ``python -m
    tests.fakes.openai_server REPLY...`` prints ``url <base URL>``, then ``received <n>``
    when the n-th request arrives and ``answered <n>`` once its reply went out (stdout,
    one line each).  The n-th request gets the n-th ``REPLY``; requests past the last one
    are never answered (the server hangs until it is killed)."""
    import sys

    replies = list(sys.argv[1:] if argv is None else argv)
    hang = threading.Event()  # never set: the process ends by a signal
    count = 0
    count_lock = threading.Lock()

    def say(line: str) -> None:
        print(line, flush=True)

    class Announcing(FakeOpenAIServer):
        def _serve(self, handler: _Handler, raw: bytes) -> None:
            nonlocal count
            with count_lock:
                count += 1
                number = count
            say(f"received {number}")
            if number > len(replies):
                hang.wait()
            self.enqueue(replies[number - 1])
            super()._serve(handler, raw)
            say(f"answered {number}")

    server = Announcing().start()
    say(f"url {server.url}")
    hang.wait()


if __name__ == "__main__":
    main()
