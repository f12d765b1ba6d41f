"""A TCP server on 127.0.0.1 that accepts connections and never answers: a hung provider.

Usage::

    with SilentServer() as silent:
        backend = OpenAIBackend(model="m", base_url=silent.url, timeout_s=1.0)
        ...  # every request waits until the backend's timeout
        assert silent.accepted >= 1

It never reads what the client sends and never writes a byte; ``stop`` closes the
listening socket and every connection it accepted.
"""

from __future__ import annotations

import contextlib
import socket
import threading

__all__ = ["SilentServer"]


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and holds them open, silent."""

    def __init__(self) -> None:
        self.accepted = 0
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> SilentServer:
        if self._listener is None:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)
            self._listener = listener
            self._thread = threading.Thread(target=self._accept, args=(listener,),
                                            name="silent-server", daemon=True)
            self._thread.start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # the listener was closed
                return
            with self._lock:
                self.accepted += 1
                self._connections.append(conn)

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way
        listener.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def __enter__(self) -> SilentServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._listener is None:
            raise RuntimeError("the silent server is not running")
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/v1"
