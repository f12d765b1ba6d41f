"""The wire format between the host and a REPL in another process: framed JSON messages.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON.  Reads
loop over short reads; a frame over ``max_bytes`` is refused from its header, before its
body is read.  The same frames travel over a socket (LM requests to the host's
``LMServer``) and over a process's stdin/stdout (the control channel of a runner).
Standard library only: this file is shipped into sandboxes next to ``guest.py`` and
``runner.py``.

A socket connection opens with a fixed-size preamble, before any frame: ``AUTH_MAGIC``
(which names the protocol and its version) and the SHA-256 digest of the secret token,
``PREAMBLE_BYTES`` in all (``preamble(token)``).  The server reads exactly that many
bytes, compares them in constant time, and closes a connection whose preamble is wrong
without reading anything more; a peer without the token can make it hold no more than the
preamble.  The control channel is a private pipe and has no preamble.

Messages are JSON objects with a ``type`` (control channel) or an ``op`` (LM requests).
Any str can be sent, even one holding a lone surrogate (``"\\ud800"``, which UTF-8 cannot
encode: such a message travels with JSON's ``\\u`` escapes and is read back the same; only a
high and a low surrogate side by side come back joined into the character they encode).  A
frame that is not a JSON object, or nests deeper than the decoder can follow, is a
``ProtocolError``: whatever a peer sends, ``recv`` raises nothing else but ``EOFError`` (the
stream closed between frames) and the stream's own ``OSError`` (a socket's timeout...).
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
from typing import Any, Protocol

VERSION = 1
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
#: The start of every socket connection: the protocol's name and the preamble's version.
AUTH_MAGIC = b"rlm-lm/1"
#: The length of ``preamble(token)``: the magic and a SHA-256 digest of the token.
PREAMBLE_BYTES = len(AUTH_MAGIC) + hashlib.sha256().digest_size
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


def preamble(token: str) -> bytes:
    """The ``PREAMBLE_BYTES`` a socket connection opens with, proving it holds ``token``."""
    return AUTH_MAGIC + hashlib.sha256(token.encode("utf-8")).digest()


def encode(message: dict[str, Any], max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
    """One frame holding ``message``; values JSON cannot hold are sent as their ``str``.

    ``ProtocolError`` when the frame would be over ``max_bytes`` or the message cannot be
    written as JSON at all (a reference cycle, nesting too deep)."""
    try:
        try:
            data = json.dumps(message, ensure_ascii=False, default=str).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: JSON's \u escapes can carry it
            data = json.dumps(message, ensure_ascii=True, default=str).encode("ascii")
    except (ValueError, TypeError, RecursionError) as exc:
        raise ProtocolError(f"a message cannot be written as JSON: {exc}") from exc
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


def decode(data: bytes) -> dict[str, Any]:
    """The message a frame's body holds; ``ProtocolError`` for anything but UTF-8 JSON
    holding an object (nesting too deep for the decoder included)."""
    try:
        message = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError, MemoryError) as exc:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(f"a frame is not UTF-8 JSON: {type(exc).__name__}: "
                            f"{str(exc)[:200]}") from exc
    if not isinstance(message, dict):
        raise ProtocolError("a frame must hold a JSON object")
    return message


def send(stream: Stream, message: dict[str, Any], max_bytes: int = MAX_MESSAGE_BYTES) -> None:
    """Write one frame."""
    stream.write(encode(message, max_bytes))


def recv(stream: Stream, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """Read one frame; ``EOFError`` when the stream closed cleanly between frames,
    ``ProtocolError`` for a frame over ``max_bytes`` (its body is not read), a truncated
    or undecodable one; the stream's own ``OSError`` (a socket's timeout...) passes."""
    (size,) = _HEADER.unpack(_read_exact(stream, _HEADER.size))
    if size > max_bytes:
        raise ProtocolError(f"incoming frame of {size} bytes is over the limit of {max_bytes}")
    return decode(_read_exact(stream, size))


def request(address: str | tuple[str, int], message: dict[str, Any], *, token: str,
            timeout_s: float | None = None, max_bytes: int = MAX_MESSAGE_BYTES
            ) -> dict[str, Any]:
    """Send one request to an ``LMServer`` (TCP ``(host, port)`` or a Unix socket path)
    on a new connection, opened with the preamble of ``token``, and return its reply."""
    frame = encode(message, max_bytes)  # before connecting: a message too big costs nothing
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout_s)
        sock.connect(address if isinstance(address, str) else tuple(address))
        stream = SocketStream(sock)
        stream.write(preamble(token) + frame)
        return recv(stream, max_bytes)
