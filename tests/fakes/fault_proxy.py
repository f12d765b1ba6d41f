"""A fault-injecting HTTP proxy on 127.0.0.1, to put in front of a real server in tests.

Usage::

    with FaultProxy(upstream="http://127.0.0.1:8080") as proxy:
        proxy.inject(429, headers={"Retry-After": "0"}).inject(503)  # then forward
        backend = OpenAIBackend(model="local", base_url=proxy.url)
        ...
        assert [a.status for a in proxy.attempts] == [429, 503, 200]

API:

- ``FaultProxy(upstream, timeout_s=120.0)``: ``upstream`` is the real server's root URL
  (scheme, host and port; the request path is kept as it is).
- ``.url``: the base URL to give a backend (``http://127.0.0.1:PORT/v1``).
- ``.inject(status, *, headers=None, times=1)``: the next ``times`` requests get an
  OpenAI-style error with that status instead of being forwarded (first in, first out);
  ``.inject("drop")`` closes the connection without answering.
- ``.attempts``: every ``Attempt`` seen (path, headers, JSON body, what it was answered
  with, and when it started and ended); ``.peak_in_flight``: the most requests open at once.
- ``.start()`` / ``.stop()`` or ``with``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx

from tests.fakes.loopback import LoopbackHTTPServer, LoopbackService

__all__ = ["Attempt", "FaultProxy"]


@dataclass
class Attempt:
    """One request the proxy received and how it was answered.

    ``headers`` are lower-cased; ``status`` is the HTTP status sent back (``None`` when the
    connection was dropped); ``forwarded`` says whether it reached the upstream server;
    ``response`` is the upstream's JSON answer when it had one.
    """

    path: str
    headers: dict[str, str]
    body: Any
    started: float
    ended: float = 0.0
    status: int | None = None
    forwarded: bool = False
    response: Any = None


class _Server(LoopbackHTTPServer):
    request_queue_size = 64

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(_Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.proxy._serve(self, "POST", raw)

    def do_GET(self) -> None:
        self.server.proxy._serve(self, "GET", b"")


class FaultProxy(LoopbackService):
    """Answers scripted faults first, then forwards every request to ``upstream``."""

    label = "proxy"
    thread_name = "fault-proxy"
    shutdown_how = socket.SHUT_RD  # idle keep-alive connections would block the join

    def __init__(self, upstream: str, *, timeout_s: float = 120.0) -> None:
        super().__init__()
        self.upstream = upstream.rstrip("/")
        self.timeout_s = timeout_s
        self.attempts: list[Attempt] = []
        self.peak_in_flight = 0
        self._in_flight = 0
        self._faults: deque[tuple[int | str, dict[str, str]]] = deque()
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._closing_client: httpx.Client | None = None

    # -- lifecycle (``LoopbackService``) ----------------------------------------------------
    def _make_server(self) -> LoopbackHTTPServer:
        return _Server(self)

    def _opening(self) -> None:
        self._client = httpx.Client(base_url=self.upstream, timeout=self.timeout_s)

    def _closing(self) -> None:
        # Requests that come in while the server closes are refused, not forwarded.
        self._closing_client, self._client = self._client, None

    def _closed(self) -> None:
        if self._closing_client is not None:
            self._closing_client.close()
        self._closing_client = None

    # -- scripting --------------------------------------------------------------------------
    def inject(self, status: int | str, *, headers: dict[str, str] | None = None,
               times: int = 1) -> FaultProxy:
        """Answer the next ``times`` requests with ``status`` (or ``"drop"``)."""
        with self._lock:
            for _ in range(times):
                self._faults.append((status, dict(headers or {})))
        return self

    @property
    def pending(self) -> int:
        """How many injected faults are left."""
        with self._lock:
            return len(self._faults)

    def reset(self) -> None:
        with self._lock:
            self.attempts.clear()
            self._faults.clear()
            self.peak_in_flight = 0

    # -- serving ----------------------------------------------------------------------------
    def _serve(self, handler: _Handler, method: str, raw: bytes) -> None:
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in handler.headers.items()}
        attempt = Attempt(handler.path, headers, body, time.monotonic())
        with self._lock:
            self.attempts.append(attempt)
            fault = self._faults.popleft() if self._faults else None
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        try:
            if fault is not None:
                status, headers = fault
                if status == "drop":
                    handler.close_connection = True
                    with contextlib.suppress(OSError):
                        handler.connection.shutdown(socket.SHUT_RDWR)
                    return
                assert isinstance(status, int)
                error = {"error": {"message": f"injected fault {status}", "type": "proxy"}}
                attempt.status = status
                self._send(handler, status, json.dumps(error).encode(), headers)
                return
            attempt.forwarded = True
            client = self._client
            if client is None:
                raise RuntimeError("the proxy is stopping")
            try:
                upstream = client.request(method, handler.path, content=raw or None,
                                          headers={"Content-Type": "application/json"})
            except httpx.HTTPError as exc:
                attempt.status = 502
                error = {"error": {"message": f"upstream failed: {exc!r}", "type": "proxy"}}
                self._send(handler, 502, json.dumps(error).encode(), {})
                return
            with contextlib.suppress(ValueError):
                attempt.response = upstream.json()
            attempt.status = upstream.status_code
            self._send(handler, upstream.status_code, upstream.content, {})
        finally:
            attempt.ended = time.monotonic()
            with self._lock:
                self._in_flight -= 1

    @staticmethod
    def _send(handler: _Handler, status: int, payload: bytes, headers: dict[str, str]) -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(payload)
        except OSError:
            handler.close_connection = True  # the client went away (it timed out)
