"""The socket transport of the LM handler: REPLs in other processes send LM requests here.

``LMServer`` listens on 127.0.0.1 (an ephemeral port) or on a Unix socket, never on a
public address.  Every request is one frame (``rlm.bridge.protocol``) carrying the secret
``token`` the environment was given; a request without the right token is refused and its
connection closed.  Each connection is served by its own thread, so batched calls and
threads in model code are answered concurrently.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import socketserver
import threading
from pathlib import Path
from typing import Any

from rlm.bridge import protocol
from rlm.environments.base import HostCall

__all__ = ["LMServer"]


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        stream = protocol.SocketStream(self.request)
        owner = self.server.owner
        while True:
            try:
                message = protocol.recv(stream, owner.max_message_bytes)
            except (EOFError, OSError):
                return
            except protocol.ProtocolError as exc:
                self._reply(stream, {"error": {"type": "BridgeProtocolError",
                                               "message": str(exc)}})
                return
            token = message.pop("token", None)
            if not isinstance(token, str) or not hmac.compare_digest(token, owner.token):
                owner.refused += 1
                self._reply(stream, {"error": {"type": "BridgeProtocolError",
                                               "message": "missing or wrong token"}})
                return
            try:
                reply = owner.call(message)
            except Exception as exc:  # a bug in the handler must not kill the server thread
                reply = {"error": {"type": type(exc).__name__, "message": str(exc)}}
            if not self._reply(stream, reply):
                return

    def _reply(self, stream: protocol.SocketStream, reply: dict[str, Any]) -> bool:
        try:
            protocol.send(stream, reply, self.server.owner.max_message_bytes)
        except (OSError, protocol.ProtocolError):
            return False
        return True


class _Server(socketserver.ThreadingMixIn, socketserver.BaseServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256  # a burst of concurrent llm_query calls must not wait on SYN retries
    owner: LMServer


class _TCPServer(_Server, socketserver.TCPServer):
    allow_reuse_address = True


class _UnixServer(_Server, socketserver.UnixStreamServer):
    pass


class LMServer:
    """Serves one environment's LM requests; ``address`` and ``token`` go to the guest.

    ``unix_path``: listen on this Unix socket instead of 127.0.0.1 (for sandboxes without
    a network).  ``close()`` stops listening and removes the socket file.
    """

    def __init__(self, call: HostCall, *, unix_path: str | os.PathLike[str] | None = None,
                 max_message_bytes: int = protocol.MAX_MESSAGE_BYTES) -> None:
        self.call = call
        self.token = secrets.token_urlsafe(32)
        self.max_message_bytes = max_message_bytes
        self.refused = 0
        self._unix_path = None if unix_path is None else Path(unix_path)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

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
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._unix_path.unlink()

    def __enter__(self) -> LMServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
