"""A fake Gemini API (``POST /{version}/models/{model}:generateContent``) on 127.0.0.1.

Usage::

    with FakeGeminiServer(reply="hello") as fake:
        client = genai.Client(api_key="k", http_options={"base_url": fake.base_url})
        fake.enqueue(status=429, headers={"retry-after": "0.01"})  # then the reply
        fake.enqueue(blocked="SAFETY")  # the prompt is blocked: no candidate

- ``reply``: a string or ``reply(body) -> str``; ``latency_s`` delays every answer.
- ``enqueue(text=None, *, status=200, headers=None, body=None, delay_s=0.0, blocked=None,
  finish_reason="STOP", times=1)``: scripted answers, first in first out; ``status`` >= 400
  sends a Google API error; ``blocked`` sends ``promptFeedback.blockReason`` and no
  candidate; ``finish_reason="SAFETY"`` sends a candidate stopped by the safety filter.
- ``requests``: each ``RecordedRequest``; ``usages``: the ``usageMetadata`` of each answer.

A ``x-goog-api-key`` header is required; a ``systemInstruction`` is read apart from
``contents``, whose roles must be ``user`` or ``model``.  Tokens are 4 characters each.
Implicit caching is modelled: the longest run of leading parts (system instruction
first) equal to a previous request's is ``cachedContentTokenCount``, which is part of
``promptTokenCount``, as Gemini reports it; below ``min_cache_tokens`` (1,024, Gemini
2.5 Flash's minimum) nothing is cached.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.anthropic_server import tokens
from tests.fakes.loopback import FakeHTTPServer, LoopbackService, PostHandler, send_json
from tests.fakes.openai_server import RecordedRequest

__all__ = ["FakeGeminiServer"]

_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
           404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}


@dataclass
class _Scripted:
    text: str | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    delay_s: float = 0.0
    blocked: str | None = None
    finish_reason: str = "STOP"


class FakeGeminiServer(LoopbackService):
    """A real HTTP server in a thread that answers ``generateContent``."""

    label = "fake Gemini server"
    thread_name = "fake-gemini-server"

    def __init__(self, reply: str | Callable[[dict[str, Any]], str] = "ok", *,
                 latency_s: float = 0.0, min_cache_tokens: int = 1024) -> None:
        super().__init__()
        self.reply, self.latency_s = reply, latency_s
        self.min_cache_tokens = min_cache_tokens
        self.requests: list[RecordedRequest] = []
        self.usages: list[dict[str, int]] = []
        self._seen: list[list[str]] = []
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
        return f"http://127.0.0.1:{self.port}"

    def enqueue(self, text: str | None = None, *, status: int = 200,
                headers: dict[str, str] | None = None, body: Any = None, delay_s: float = 0.0,
                blocked: str | None = None, finish_reason: str = "STOP", times: int = 1) -> None:
        with self._lock:
            for _ in range(times):
                self._queue.append(_Scripted(text, status, dict(headers or {}), body, delay_s,
                                             blocked, finish_reason))

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
            self._send(handler, 200, self._answer(handler.path, body, text, scripted),
                       scripted.headers)

    @staticmethod
    def _problem(path: str, headers: dict[str, str], body: Any) -> tuple[int, str] | None:
        if not path.split("?")[0].endswith(":generateContent") or "/models/" not in path:
            return 404, f"no route {path}"
        if not headers.get("x-goog-api-key"):
            return 401, "API key not valid. Please pass a valid API key."
        if not isinstance(body, dict) or not isinstance(body.get("contents"), list):
            return 400, "contents is required"
        if any(c.get("role") not in ("user", "model") for c in body["contents"]):
            return 400, "Please use a valid role: user, model."
        return None

    def _usage(self, body: dict[str, Any]) -> dict[str, int]:
        items = [("system", p) for p in (body.get("systemInstruction") or {}).get("parts", [])]
        items += [(c["role"], p) for c in body["contents"] for p in c.get("parts", [])]
        parts = [json.dumps(item, sort_keys=True) for item in items]
        sizes = [tokens(str(part.get("text", ""))) for _, part in items]
        with self._lock:
            common = 0
            for earlier in self._seen:
                run = 0
                while run < min(len(earlier), len(parts)) and earlier[run] == parts[run]:
                    run += 1
                common = max(common, run)
            self._seen.append(parts)
        cached = sum(sizes[:common])
        return {"promptTokenCount": sum(sizes),
                "cachedContentTokenCount": cached if cached >= self.min_cache_tokens else 0}

    def _answer(self, path: str, body: dict[str, Any], text: str,
                scripted: _Scripted) -> dict[str, Any]:
        model = path.split("/models/")[1].split(":")[0]
        usage = self._usage(body)
        if scripted.blocked:
            with self._lock:
                self.usages.append(usage)
            return {"promptFeedback": {"blockReason": scripted.blocked},
                    "usageMetadata": usage, "modelVersion": model}
        config = body.get("generationConfig") or {}
        finish = scripted.finish_reason
        for stop in config.get("stopSequences") or []:
            if stop in text:
                text = text[:text.index(stop)]
        limit = config.get("maxOutputTokens")
        if isinstance(limit, int) and tokens(text) > limit:
            text, finish = text[:limit * 4], "MAX_TOKENS"
        usage = {**usage, "candidatesTokenCount": tokens(text)}
        usage["totalTokenCount"] = usage["promptTokenCount"] + usage["candidatesTokenCount"]
        with self._lock:
            self.usages.append(usage)
        content = {"role": "model", "parts": [{"text": text}]} if finish != "SAFETY" else None
        candidate: dict[str, Any] = {"finishReason": finish, "index": 0}
        if content is not None:
            candidate["content"] = content
        return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model}

    def _error(self, handler: PostHandler, status: int, message: str,
               headers: dict[str, str] | None = None) -> None:
        error = {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}
        self._send(handler, status, {"error": error}, headers or {})

    @staticmethod
    def _send(handler: PostHandler, status: int, body: Any, headers: dict[str, str]) -> None:
        send_json(handler, status, body, headers, "application/json; charset=UTF-8")
