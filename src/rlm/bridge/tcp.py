"""The socket transport of the LM handler: REPLs in other processes send LM requests here.

``LMServer`` listens on 127.0.0.1 (an ephemeral port) or on a Unix socket, never on a
public address.  What a connection must do, and what it may cost the host:

- It opens with the preamble of ``rlm.bridge.protocol`` (``protocol.preamble(token)``:
  a magic naming the protocol version and a digest of the secret ``token``, a fixed
  ``PREAMBLE_BYTES``), within ``auth_timeout_s``.  Exactly that many bytes are read and
  compared in constant time; a wrong, short or late preamble gets a short error frame at
  most and the connection is closed, with nothing more read from it.  A peer without the
  token thus makes the host hold at most ``PREAMBLE_BYTES`` and a thread for
  ``auth_timeout_s``.
- Then it sends request frames, each answered by one reply frame (a ``{"error": ...}``
  reply when the handler raised).  A frame over ``max_message_bytes`` is refused from its
  4-byte header, before its body is read; a frame that is not a JSON object, or nests too
  deep, gets an error reply.  Both close the connection.
- A connection with no frame for ``idle_timeout_s`` between requests is closed; the time
  the host takes to compute a reply (an LM call may take minutes) does not count, and the
  same limit bounds the sending of a reply its peer does not read.
- At most ``max_connections`` connections are served at once, each by its own thread (so
  batched calls and threads in model code are answered concurrently); one over the cap
  gets an error frame and is closed by the accepting thread, without a thread of its own.
  Of those, at most ``max_unauthenticated`` may still be reading their preamble: past
  that, the accepting thread waits (new connections queue in the listen backlog) until one
  authenticates or times out, so silent connections hold a few threads, not hundreds.

Nothing a peer sends ends a connection's thread with an exception: an unexpected failure
is logged (logger ``rlm.bridge.tcp``) and closes that connection only.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
import socket
import socketserver
import threading
import time
from pathlib import Path
from typing import Any

from rlm.bridge import protocol
from rlm.types import HostCall

__all__ = ["LMServer"]

_log = logging.getLogger(__name__)


def _error(message: str) -> dict[str, Any]:
    return protocol.error_reply("BridgeProtocolError", message)


def _send_and_drop(sock: socket.socket, reply: dict[str, Any]) -> None:
    """Best effort: a small error frame for a peer about to be dropped, never blocking."""
    with contextlib.suppress(OSError, protocol.ProtocolError):
        sock.setblocking(False)
        sock.send(protocol.encode(reply))


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        owner = self.server.owner
        try:
            authenticated = self._authenticate(owner)
            if authenticated:  # a refused peer's slot is freed when its thread is done
                owner._release_slot()
                self.request.settimeout(owner.idle_timeout_s)
                self._serve(protocol.SocketStream(self.request), owner)
        except Exception:  # a bug here must close this connection, not die unseen
            _log.exception("LM server: a connection failed")

    def _authenticate(self, owner: LMServer) -> bool:
        """Read exactly the preamble, within ``auth_timeout_s`` in all, and check it."""
        sock: socket.socket = self.request
        deadline = time.monotonic() + owner.auth_timeout_s
        got = b""
        while len(got) < protocol.PREAMBLE_BYTES:
            left = deadline - time.monotonic()
            if left <= 0:
                owner._count("refused")
                _send_and_drop(sock, _error(f"no preamble within {owner.auth_timeout_s} s"))
                return False
            sock.settimeout(left)
            try:
                chunk = sock.recv(protocol.PREAMBLE_BYTES - len(got))
            except TimeoutError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                owner._count("refused")
                return False
            got += chunk
        if hmac.compare_digest(got, owner._preamble):
            return True
        owner._count("refused")
        wrong = ("missing or wrong token" if got.startswith(protocol.AUTH_MAGIC) else
                 "not an LM handler connection of this version: it must open with "
                 f"{protocol.AUTH_MAGIC!r} and the token's digest")
        _send_and_drop(sock, _error(wrong))
        return False

    def _serve(self, stream: protocol.SocketStream, owner: LMServer) -> None:
        while True:
            try:
                message = protocol.recv(stream, owner.max_message_bytes)
            except (EOFError, OSError):  # closed, or idle past idle_timeout_s
                return
            except protocol.ProtocolError as exc:
                self._reply(stream, _error(str(exc)))
                return
            try:
                reply = owner.call(message)
            except Exception as exc:  # a bug in the handler must not kill the connection
                reply = protocol.error_reply(exc)
            if not self._reply(stream, reply):
                return

    def _reply(self, stream: protocol.SocketStream, reply: dict[str, Any]) -> bool:
        limit = self.server.owner.max_message_bytes
        try:
            try:
                frame = protocol.encode(reply, limit)
            except protocol.ProtocolError as exc:  # too big: say so rather than go silent
                frame = protocol.encode(_error(f"the reply cannot be sent: {exc}"), limit)
            stream.write(frame)
        except (OSError, protocol.ProtocolError):
            return False
        return True


class _Server(socketserver.ThreadingMixIn, socketserver.BaseServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256  # a burst of concurrent llm_query calls must not wait on SYN retries
    owner: LMServer

    def process_request(self, request: Any, client_address: Any) -> None:
        owner = self.owner
        while not owner._pending.acquire(timeout=0.1):  # a slot to read a preamble in
            if owner._closing:
                self.shutdown_request(request)
                return
        if not owner._admit(request):
            owner._pending.release()
            owner._count("turned_away")
            _send_and_drop(request, _error(
                f"the LM handler serves at most {owner.max_connections} connections at once"))
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: the slots are free again
            owner._leave(request)
            owner._pending.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        self.owner._slot.held = True
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.owner._leave(request)
            # Only now, with the connection shut: the next stalled peer's thread does not
            # start while this one is still winding down.
            self.owner._release_slot()

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.exception("LM server: a connection failed")


class _TCPServer(_Server, socketserver.TCPServer):
    allow_reuse_address = True


class _UnixServer(_Server, socketserver.UnixStreamServer):
    pass


class LMServer:
    """Serves one environment's LM requests; ``address`` and ``token`` go to the guest.

    ``unix_path``: listen on this Unix socket instead of 127.0.0.1 (for sandboxes without
    a network).  ``max_message_bytes`` bounds a frame each way; ``auth_timeout_s`` is the
    time a connection has to send its preamble; ``idle_timeout_s`` the time it may wait
    between requests; ``max_connections`` the connections served at once, of which
    ``max_unauthenticated`` may be waiting for their preamble.  ``close()``
    stops listening, cuts the open connections and removes the socket file.

    Counters, for tests and diagnostics: ``refused`` (connections that did not
    authenticate), ``turned_away`` (over ``max_connections``); ``connections`` is the
    number open now.
    """

    def __init__(self, call: HostCall, *, unix_path: str | os.PathLike[str] | None = None,
                 max_message_bytes: int = protocol.MAX_MESSAGE_BYTES,
                 auth_timeout_s: float = 5.0, idle_timeout_s: float | None = 300.0,
                 max_connections: int = 256, max_unauthenticated: int = 16) -> None:
        if max_connections < 1 or max_unauthenticated < 1:
            raise ValueError("max_connections and max_unauthenticated must be at least 1")
        self.call = call
        self.token = secrets.token_urlsafe(32)
        self._preamble = protocol.preamble(self.token)
        self.max_message_bytes = max_message_bytes
        self.auth_timeout_s = auth_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self.max_unauthenticated = max_unauthenticated
        self._pending = threading.BoundedSemaphore(max_unauthenticated)
        self._slot = threading.local()  # whether this handler thread holds a preamble slot
        self._closing = False
        self.refused = 0
        self.turned_away = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._unix_path = None if unix_path is None else Path(unix_path)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- bookkeeping, called by the server's threads --------------------------------------------
    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def _admit(self, sock: socket.socket) -> bool:
        with self._lock:
            if len(self._open) >= self.max_connections:
                return False
            self._open.add(sock)
            return True

    def _release_slot(self) -> None:
        """Free this thread's preamble slot, once."""
        if getattr(self._slot, "held", False):
            self._slot.held = False
            self._pending.release()

    def _leave(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._open)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._server is not None:
            return
        if self._unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._unix_path.unlink()
            server: _Server = _UnixServer(str(self._unix_path), _Handler)
            os.chmod(self._unix_path, 0o666)  # a sandbox may run as another user
        else:
            server = _TCPServer(("127.0.0.1", 0), _Handler)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="rlm-lm-server", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str | tuple[str, int]:
        if self._server is None:
            raise RuntimeError("the LM server is not started")
        if self._unix_path is not None:
            return str(self._unix_path)
        host, port = self._server.server_address[:2]
        return (str(host), int(port))

    def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._closing = True
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            still_open = list(self._open)
        for sock in still_open:  # their threads see the end of the stream and return
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._unix_path.unlink()

    def __enter__(self) -> LMServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
