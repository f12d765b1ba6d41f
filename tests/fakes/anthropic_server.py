"""A fake Anthropic Messages API (``POST /v1/messages``) on 127.0.0.1, with prompt caching.

Usage::

    with FakeAnthropicServer(reply="hello") as fake:
        client = anthropic.Anthropic(api_key="k", base_url=fake.base_url)
        fake.enqueue(status=429, headers={"retry-after": "0.01"})  # then the reply

- ``reply``: a string or ``reply(body) -> str``; ``latency_s`` delays every answer.
- ``enqueue(text=None, *, status=200, headers=None, body=None, delay_s=0.0, times=1)``:
  scripted answers, first in first out; ``status`` >= 400 sends an Anthropic error
  (429 ``rate_limit_error``, 529 ``overloaded_error``...); ``body`` is sent verbatim.
- ``requests``: each ``RecordedRequest`` (path, lower-cased headers, JSON body);
  ``usages``: the ``usage`` of each message answered.
- ``text_of(content)``: the text of a message's ``content`` (a string or blocks).

It checks what the real API checks and this project relies on: a key (``x-api-key``, or
``Authorization: Bearer`` as recent SDKs send it), an ``anthropic-version`` header,
``max_tokens``, no ``"system"`` role inside ``messages``.
Tokens are 4 characters each.  Caching works as the API documents it: a block marked
``cache_control`` caches the prompt prefix up to it (system, then messages, in order);
a later request whose prefix up to one of its block boundaries was cached (at most
``lookback`` blocks before a breakpoint) reads it; the blocks after that, up to the last
breakpoint, are written.  ``usage`` reports ``input_tokens`` (neither read nor written),
``cache_creation_input_tokens`` and ``cache_read_input_tokens``.  Prefixes shorter than
``min_cache_tokens`` are not cached.  Stop sequences and ``max_tokens`` cut the reply.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.loopback import FakeHTTPServer, LoopbackService, PostHandler, send_json
from tests.fakes.openai_server import RecordedRequest

__all__ = ["FakeAnthropicServer", "text_of", "tokens"]

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 429: "rate_limit_error",
                500: "api_error", 529: "overloaded_error"}


@dataclass
class _Scripted:
    text: str | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    delay_s: float = 0.0


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def text_of(content: Any) -> str:
    """The text of a message's ``content``: a string, or a list of text blocks."""
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if isinstance(b, dict))


class FakeAnthropicServer(LoopbackService):
    """A real HTTP server in a thread that answers the Messages API."""

    label = "fake Anthropic server"
    thread_name = "fake-anthropic-server"

    def __init__(self, reply: str | Callable[[dict[str, Any]], str] = "ok", *,
                 latency_s: float = 0.0, min_cache_tokens: int = 0, lookback: int = 20) -> None:
        super().__init__()
        self.reply, self.latency_s = reply, latency_s
        self.min_cache_tokens, self.lookback = min_cache_tokens, lookback
        self.requests: list[RecordedRequest] = []
        #: The ``usage`` of every message answered, in order.
        self.usages: list[dict[str, int]] = []
        self.cached: set[str] = set()
        self._queue: deque[_Scripted] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def _make_server(self) -> FakeHTTPServer:
        return FakeHTTPServer(self)

    def _opening(self) -> None:
        self._stopping.clear()

    def _closing(self) -> None:
        self._stopping.set()

    @property
    def base_url(self) -> str:
        """What the SDK takes as ``base_url`` (it adds ``/v1/messages``)."""
        return f"http://127.0.0.1:{self.port}"

    def enqueue(self, text: str | None = None, *, status: int = 200,
                headers: dict[str, str] | None = None, body: Any = None, delay_s: float = 0.0,
                times: int = 1) -> None:
        with self._lock:
            for _ in range(times):
                self._queue.append(_Scripted(text, status, dict(headers or {}), body, delay_s))

    # -- serving ----------------------------------------------------------------------------
    def _serve(self, handler: PostHandler, raw: bytes) -> None:
        try:
            body: Any = json.loads(raw or b"null")
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self._lock:
            self.requests.append(RecordedRequest(handler.path, headers, body, time.time()))
            scripted = self._queue.popleft() if self._queue else _Scripted()
        delay = self.latency_s + scripted.delay_s
        if delay > 0 and self._stopping.wait(delay):
            handler.close_connection = True
            return
        problem = self._problem(handler.path, headers, body)
        if scripted.body is not None:
            self._send(handler, scripted.status, scripted.body, scripted.headers)
        elif scripted.status >= 400:
            self._error(handler, scripted.status, f"fake error {scripted.status}",
                        scripted.headers)
        elif problem is not None:
            self._error(handler, *problem)
        else:
            text = scripted.text if scripted.text is not None else (
                self.reply(body) if callable(self.reply) else self.reply)
            self._send(handler, 200, self._message(body, text), scripted.headers)

    @staticmethod
    def _problem(path: str, headers: dict[str, str],
                 body: Any) -> tuple[int, str] | None:
        if path.split("?")[0].rstrip("/") != "/v1/messages":
            return 404, f"no route {path}"
        if not (headers.get("x-api-key") or headers.get("authorization", "").startswith("Bearer ")):
            return 401, "an x-api-key or Authorization: Bearer header is required"
        if not headers.get("anthropic-version"):
            return 400, "anthropic-version header is required"
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return 400, "messages: field required"
        if not isinstance(body.get("max_tokens"), int):
            return 400, "max_tokens: field required"
        if any(m.get("role") not in ("user", "assistant") for m in body["messages"]):
            return 400, "messages: roles must be 'user' or 'assistant' (system is top-level)"
        return None

    def _blocks(self, body: dict[str, Any]) -> list[tuple[str, bool]]:
        """``(identity, marked)`` of every prompt block, in cache order."""
        found: list[tuple[str, bool]] = []
        system = body.get("system")
        items = [("system", system)] if system else []
        items += [(m["role"], m["content"]) for m in body["messages"]]
        for role, content in items:
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            for part in parts:
                marked = isinstance(part, dict) and "cache_control" in part
                plain = {k: v for k, v in part.items() if k != "cache_control"}
                found.append((json.dumps([role, plain], sort_keys=True), marked))
        return found

    def _usage(self, body: dict[str, Any]) -> dict[str, int]:
        blocks = self._blocks(body)
        sizes = [tokens(json.loads(identity)[1].get("text", "")) for identity, _ in blocks]
        keys, digest = [], hashlib.sha256(str(body.get("model")).encode())
        for identity, _ in blocks:
            digest.update(identity.encode())
            keys.append(digest.copy().hexdigest())
        marks = [i for i, (_, marked) in enumerate(blocks) if marked]
        total = sum(sizes)
        if not marks:
            return {"input_tokens": total, "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0}
        with self._lock:
            hit = -1
            for mark in marks:  # each breakpoint looks back for a cached prefix
                for i in range(mark, max(mark - self.lookback, -1), -1):
                    if keys[i] in self.cached:
                        hit = max(hit, i)
                        break
            last = marks[-1]
            for mark in marks:
                if sum(sizes[:mark + 1]) >= self.min_cache_tokens:
                    self.cached.add(keys[mark])
        read = sum(sizes[:hit + 1])
        written = sum(sizes[hit + 1:last + 1]) if sum(sizes[:last + 1]) >= \
            self.min_cache_tokens else 0
        return {"input_tokens": total - read - written, "cache_creation_input_tokens": written,
                "cache_read_input_tokens": read}

    def _message(self, body: dict[str, Any], text: str) -> dict[str, Any]:
        stop_reason, stop_sequence = "end_turn", None
        for stop in body.get("stop_sequences") or []:
            if stop in text:
                text, stop_reason, stop_sequence = text[:text.index(stop)], "stop_sequence", stop
        if tokens(text) > body["max_tokens"]:
            text, stop_reason = text[:body["max_tokens"] * 4], "max_tokens"
        usage = {**self._usage(body), "output_tokens": tokens(text)}
        with self._lock:
            self.usages.append(usage)
        return {"id": f"msg_fake_{len(self.requests)}", "type": "message", "role": "assistant",
                "model": body.get("model"), "content": [{"type": "text", "text": text}],
                "stop_reason": stop_reason, "stop_sequence": stop_sequence, "usage": usage}

    def _error(self, handler: PostHandler, status: int, message: str,
               headers: dict[str, str] | None = None) -> None:
        kind = _ERROR_TYPES.get(status, "api_error")
        self._send(handler, status, {"type": "error", "error": {"type": kind,
                                                                "message": message}},
                   headers or {})

    @staticmethod
    def _send(handler: PostHandler, status: int, body: Any, headers: dict[str, str]) -> None:
        send_json(handler, status, body, {"request-id": "req_fake", **headers})
