"""The wire format between the host and a REPL in another process: framed JSON messages.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON.  Reads
loop over short reads; a frame over ``max_bytes`` is refused before it is read.  The same
frames travel over a socket (LM requests to the host's ``LMServer``) and over a process's
stdin/stdout (the control channel of a runner).  Standard library only: this file is shipped
into sandboxes next to ``guest.py`` and ``runner.py``.

Messages are JSON objects with a ``type`` (control channel) or an ``op`` (LM requests).
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any, Protocol

VERSION = 1
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """A frame was malformed, too large, or the stream ended in the middle of one."""


class Stream(Protocol):
    def read(self, size: int) -> bytes: ...

    def write(self, data: bytes) -> None: ...


class SocketStream:
    """A connected socket seen as a byte stream."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def read(self, size: int) -> bytes:
        return self.sock.recv(size)

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)


class FileStream:
    """A pair of binary files (a pipe's two ends) seen as one byte stream."""

    def __init__(self, reader: Any, writer: Any) -> None:
        self.reader = reader
        self.writer = writer

    def read(self, size: int) -> bytes:
        return self.reader.read1(size) if hasattr(self.reader, "read1") else self.reader.read(size)

    def write(self, data: bytes) -> None:
        # An unbuffered file's write() may write less than asked (gVisor's pipes do): loop.
        view = memoryview(data)
        while view:
            written = self.writer.write(view)
            view = view[len(view) if written is None else written:]
        self.writer.flush()


def encode(message: dict[str, Any], max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
    data = json.dumps(message, ensure_ascii=False, default=str).encode("utf-8")
    if len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes is over the limit of {max_bytes}")
    return _HEADER.pack(len(data)) + data


def _read_exact(stream: Stream, size: int) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = stream.read(min(left, 1 << 20))
        if not chunk:
            if left == size and not chunks:
                raise EOFError("the stream is closed")
            raise ProtocolError(f"the stream ended {left} bytes before the end of a frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def send(stream: Stream, message: dict[str, Any], max_bytes: int = MAX_MESSAGE_BYTES) -> None:
    """Write one frame."""
    stream.write(encode(message, max_bytes))


def recv(stream: Stream, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """Read one frame; ``EOFError`` when the stream closed cleanly between frames."""
    (size,) = _HEADER.unpack(_read_exact(stream, _HEADER.size))
    if size > max_bytes:
        raise ProtocolError(f"incoming frame of {size} bytes is over the limit of {max_bytes}")
    try:
        message = json.loads(_read_exact(stream, size).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"a frame is not UTF-8 JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise ProtocolError("a frame must hold a JSON object")
    return message


def request(address: str | tuple[str, int], message: dict[str, Any], *,
            timeout_s: float | None = None, max_bytes: int = MAX_MESSAGE_BYTES
            ) -> dict[str, Any]:
    """Send one request to a socket server (TCP ``(host, port)`` or a Unix socket path)
    on a new connection and return its reply."""
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout_s)
        sock.connect(address if isinstance(address, str) else tuple(address))
        stream = SocketStream(sock)
        send(stream, message, max_bytes)
        return recv(stream, max_bytes)
