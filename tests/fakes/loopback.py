"""What the HTTP fakes share: a threaded server on 127.0.0.1 and its start/stop lifecycle.

``LoopbackService`` is the wrapper a test holds (``start()``/``stop()`` or ``with``, ``url``);
a subclass only builds its server (``_make_server``) and, where it needs to, hooks the
moments around starting and stopping.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

__all__ = ["LoopbackHTTPServer", "LoopbackService"]


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server on 127.0.0.1 that tracks its open connections, so ``close``
    can end idle keep-alive connections instead of waiting for them."""

    daemon_threads = False  # server_close() joins the handler threads
    block_on_close = True
    request_queue_size = 256  # the default 5 drops bursts of connects (1 s SYN retries)

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), handler)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.connections_lock:
                self.connections.discard(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out or disconnect are part of the tests

    def close(self, how: int = socket.SHUT_RDWR) -> None:
        """Stop serving, shut open connections down (``how``), join the handler threads."""
        self.shutdown()
        with self.connections_lock:
            for conn in self.connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(how)
        self.server_close()


class LoopbackService:
    """A ``LoopbackHTTPServer`` served from a thread: ``start()`` (idempotent, returns the
    service), ``stop()`` (closes open connections, joins the threads), ``with``, ``port``
    and ``url`` (``http://127.0.0.1:PORT/v1``)."""

    #: How ``url`` names the service when it is not running.
    label = "loopback server"
    thread_name = "loopback-server"
    #: How ``stop`` shuts the open connections down.
    shutdown_how = socket.SHUT_RDWR

    def __init__(self) -> None:
        self._server: LoopbackHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _make_server(self) -> LoopbackHTTPServer:
        raise NotImplementedError

    def _opening(self) -> None:
        """Called by ``start`` before the server is made."""

    def _closing(self) -> None:
        """Called by ``stop`` before the server closes (wake what its handlers wait on)."""

    def _closed(self) -> None:
        """Called by ``stop`` once the server's threads are joined."""

    def start(self) -> Self:
        if self._server is None:
            self._opening()
            self._server = self._make_server()
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            kwargs={"poll_interval": 0.05},
                                            name=self.thread_name, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is None:
            return
        self._closing()
        server.close(self.shutdown_how)
        if thread is not None:
            thread.join(timeout=5)
        self._closed()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"the {self.label} is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


class PostHandler(BaseHTTPRequestHandler):
    """Hands each POST body to the fake behind the server (``server.fake._serve``)."""

    # headers and body go out in two writes: without this, Nagle's algorithm holds the
    # body until the client's delayed ACK (~40 ms a request)
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    server: FakeHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.fake._serve(self, raw)


class FakeHTTPServer(LoopbackHTTPServer):
    """The server of a fake API: ``fake`` answers what ``handler`` receives."""

    def __init__(self, fake: Any, handler: type[BaseHTTPRequestHandler] = PostHandler) -> None:
        self.fake = fake
        super().__init__(handler)


def send_json(handler: BaseHTTPRequestHandler, status: int, body: Any,
              headers: dict[str, str], content_type: str = "application/json") -> None:
    """Send ``body`` (bytes, text, or a value sent as JSON) with ``headers``; a client that
    hung up only closes the connection."""
    if isinstance(body, bytes):
        payload = body
    elif isinstance(body, str):
        payload = body.encode()
    else:
        payload = json.dumps(body).encode()
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(payload)
    except OSError:
        handler.close_connection = True
