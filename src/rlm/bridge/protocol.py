"""The wire format between the host and a REPL in another process, defined once.

**Frames.**  A frame is a 4-byte big-endian length followed by that many bytes of UTF-8
JSON.  Reads loop over short reads; a frame over ``max_bytes`` is refused from its header,
before its body is read.  The same frames travel over a socket (LM requests to the host's
``LMServer``) and over a process's stdin/stdout (the control channel of a runner).
Standard library only: this file is shipped into sandboxes next to ``guest.py``,
``runner.py`` and ``broker.py``.

A socket connection opens with a fixed-size preamble, before any frame: ``AUTH_MAGIC``
(which names the protocol and its version) and the SHA-256 digest of the secret token,
``PREAMBLE_BYTES`` in all (``preamble(token)``).  The server reads exactly that many
bytes, compares them in constant time, and closes a connection whose preamble is wrong
without reading anything more; a peer without the token can make it hold no more than the
preamble.  The control channel is a private pipe and has no preamble.

Any str can be sent, even one holding a lone surrogate (``"\\ud800"``, which UTF-8 cannot
encode: such a message travels with JSON's ``\\u`` escapes and is read back the same; only a
high and a low surrogate side by side come back joined into the character they encode).  A
frame that is not a JSON object, or nests deeper than the decoder can follow, is a
``ProtocolError``: whatever a peer sends, ``recv`` raises nothing else but ``EOFError`` (the
stream closed between frames) and the stream's own ``OSError`` (a socket's timeout...).

**Messages.**  The host drives a REPL with five control operations, ``CONTROL`` (``OPS``
maps each to the type of its reply): ``init {lm_address, token, capture_limit}``, ``tools
{sources}``, ``set_var {name, format, file}``, ``exec {code, timeout_s}``, ``shutdown``.  A
REPL opens with ``ready {pid, version}`` and answers ``ok``, ``result {stdout, stderr, error,
final, elapsed_s, notes}`` (``rlm.types.ExecResult`` checks it) or ``error {error}``.  The
runner takes them as frames on its pipe, the Jupyter kernel of the ``ipython`` environment
as frames in files, the HTTP broker as ``POST /<op>`` with the fields as the JSON body.
The REPL's own LM requests (``{"op": "llm_query", ...}``, see ``guest.py``; a typed one
carries ``schema``, a JSON Schema, and is answered with ``value`` instead of ``text``) travel
on a socket, over HTTP, or on the control channel as ``lm_request {id, request}`` /
``lm_reply {id, reply}``.  A failure sent as data has one shape, ``{"error": {"type", "message"}}``
(``error_reply``), wherever it travels.

The value of a ``set_var`` crosses as bytes in one of the formats of ``values.py``.

**Stopped blocks.**  What the model is told when a block did not end by itself (it ran past
its limit, the call tree stopped, the REPL died) is built from ``CANCELLED``, ``KEPT``,
``RESTARTED`` and the functions next to them, by every environment.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, Protocol, TypeVar

VERSION = 1
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
#: The start of every socket connection: the protocol's name and the preamble's version.
AUTH_MAGIC = b"rlm-lm/1"
#: The length of ``preamble(token)``: the magic and a SHA-256 digest of the token.
PREAMBLE_BYTES = len(AUTH_MAGIC) + hashlib.sha256().digest_size
#: Characters a REPL keeps of each stream of a block (head and tail), and of its error text.
CAPTURE_LIMIT = 2_000_000
_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """A frame was malformed, too large, or the stream ended in the middle of one."""


class Refused(Exception):
    """The REPL answered a control message with an ``error`` frame (``"Type: message"``)."""


# -- frames -----------------------------------------------------------------------------------
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


def to_json(message: Any) -> bytes:
    """``message`` as UTF-8 JSON; values JSON cannot hold are sent as their ``str``, a lone
    surrogate as a ``\\u`` escape (which decodes to the same text)."""
    try:
        return json.dumps(message, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(message, ensure_ascii=True, default=str).encode("ascii")


def encode(message: dict[str, Any], max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
    """One frame holding ``message`` (see ``to_json``).

    ``ProtocolError`` when the frame would be over ``max_bytes`` or the message cannot be
    written as JSON at all (a reference cycle, nesting too deep)."""
    try:
        data = to_json(message)
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


# -- the error envelope -------------------------------------------------------------------------
def error_body(exc: BaseException) -> dict[str, Any]:
    """The inside of the error envelope for ``exc``: ``{"type", "message"}``."""
    return {"type": type(exc).__name__, "message": str(exc)}


def error_reply(error: BaseException | str, message: str = "") -> dict[str, Any]:
    """``{"error": {"type", "message"}}``, the one shape of a failure sent as data: for an
    exception (its class name and text), or for a type name and a message."""
    if isinstance(error, BaseException):
        return {"error": error_body(error)}
    return {"error": {"type": error, "message": message}}


def error_text(error: Any) -> str:
    """``"Type: message"`` of an envelope's inside, whatever a peer put there."""
    if not isinstance(error, Mapping):
        return f"ProtocolError: a malformed error {error!r:.200}"
    return f"{error.get('type', 'Error')}: {error.get('message', '')}"


# -- messages -----------------------------------------------------------------------------------
_M = TypeVar("_M", bound="Message")
#: The JSON kinds a field's annotation admits (``bool`` is not a number here).
_KINDS: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (int, float), "dict": (dict,), "list": (list,),
    "tuple": (tuple,), "None": (type(None),)}


def _kinds(annotation: str) -> tuple[type, ...]:
    return tuple(kind for part in annotation.split("|")
                 for kind in _KINDS[part.strip().partition("[")[0]])


@dataclass(frozen=True)
class Message:
    """A frame's typed form: ``to_dict()`` is the frame; ``from_dict(frame)`` reads one,
    ``ProtocolError`` for another type, a missing field or a field of the wrong kind."""

    type: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **self.body()}

    def body(self) -> dict[str, Any]:
        """The fields alone (the JSON body of ``POST /<type>`` to the broker)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls: type[_M], frame: Mapping[str, Any]) -> _M:
        if not isinstance(frame, Mapping) or frame.get("type") != cls.type:
            got = frame.get("type") if isinstance(frame, Mapping) else type(frame).__name__
            raise ProtocolError(f"expected a {cls.type!r} frame, got {got!r:.100}")
        values = {}
        for field in fields(cls):
            if field.name in frame:
                value = frame[field.name]
            elif field.default is not MISSING:
                value = field.default
            else:
                raise ProtocolError(f"a {cls.type!r} frame lacks {field.name!r}")
            kinds = _kinds(str(field.type))
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise ProtocolError(f"a {cls.type!r} frame's {field.name!r} is "
                                    f"{type(value).__name__}")
            values[field.name] = value
        message = cls(**values)
        message.check()
        return message

    def check(self) -> None:
        """Raise ``ProtocolError`` for fields of the right kind but a wrong value."""


@dataclass(frozen=True)
class Init(Message):
    """Build the REPL.  Its LM requests go to the ``LMServer`` at ``lm_address`` (a Unix
    socket path or ``[host, port]``) with ``token``; with none, on the control channel."""

    type: ClassVar[str] = "init"
    reply: ClassVar[str] = "ok"
    lm_address: str | list[Any] | tuple[str, int] | None = None
    token: str = ""
    capture_limit: int = CAPTURE_LIMIT


@dataclass(frozen=True)
class Tools(Message):
    """Define the user's tools from their code, ``{name: source}`` (``guest.load_tools``)."""

    type: ClassVar[str] = "tools"
    reply: ClassVar[str] = "ok"
    sources: dict[str, str]

    def check(self) -> None:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.sources.items()):
            raise ProtocolError("a 'tools' frame's sources must map names to source text")


@dataclass(frozen=True)
class SetVar(Message):
    """Bind ``name`` to a value in ``format`` (``values.VALUE_FORMATS``): the bytes of
    ``file`` on the control channel, the request's body over HTTP."""

    type: ClassVar[str] = "set_var"
    reply: ClassVar[str] = "ok"
    name: str
    format: str
    file: str = ""

    def check(self) -> None:  # the format is checked where the value is decoded
        if not self.name.isidentifier():
            raise ProtocolError(f"name={self.name!r}: want an identifier")


@dataclass(frozen=True)
class Exec(Message):
    """Run one block; ``timeout_s``: its limit where the REPL enforces one (the broker)."""

    type: ClassVar[str] = "exec"
    reply: ClassVar[str] = "result"
    code: str
    timeout_s: float | None = None


@dataclass(frozen=True)
class Shutdown(Message):
    """End the REPL after the reply."""

    type: ClassVar[str] = "shutdown"
    reply: ClassVar[str] = "ok"


Control = Init | Tools | SetVar | Exec | Shutdown
#: The control operations, by frame type.
CONTROL: dict[str, type[Control]] = {cls.type: cls for cls in (Init, Tools, SetVar, Exec,
                                                                  Shutdown)}
#: The type of the reply to each control operation (an ``error`` frame may come instead).
OPS: dict[str, str] = {op: cls.reply for op, cls in CONTROL.items()}


def control_message(frame: Mapping[str, Any]) -> Control:
    """The control message a frame holds; ``ProtocolError`` for anything else."""
    kind = frame.get("type")
    cls = CONTROL.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown control message type {frame.get('type')!r:.100}")
    return cls.from_dict(frame)


@dataclass(frozen=True)
class Ready(Message):
    """The REPL's first frame: it is listening."""

    type: ClassVar[str] = "ready"
    pid: int
    version: int = VERSION


@dataclass(frozen=True)
class Ok(Message):
    """A control message was carried out."""

    type: ClassVar[str] = "ok"


@dataclass(frozen=True)
class Failure(Message):
    """A control message failed; ``error`` is the envelope's inside (``error_reply``)."""

    type: ClassVar[str] = "error"
    error: dict[str, Any]

    @classmethod
    def of(cls, error: BaseException | str, message: str = "") -> Failure:
        return cls(error_reply(error, message)["error"])


def result_frame(result: Mapping[str, Any]) -> dict[str, Any]:
    """The ``result`` frame of a block (``GuestRuntime.run_cell``'s dict)."""
    return {"type": "result", **result}


def expect_reply(frame: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The fields of ``frame`` (without its type) when it is a reply of ``kind``;
    ``Refused`` for an ``error`` frame, ``ProtocolError`` for any other."""
    got = frame.get("type")
    if got == "error":
        raise Refused(error_text(frame.get("error")))
    if got != kind:
        raise ProtocolError(f"expected {kind!r}, got {got!r:.100}")
    return {key: value for key, value in frame.items() if key != "type"}


@dataclass(frozen=True)
class LMRequest(Message):
    """An LM request of REPL code on the control channel; answered by the ``LMReply`` of
    the same ``id``, in any order."""

    type: ClassVar[str] = "lm_request"
    id: int
    request: dict[str, Any]


@dataclass(frozen=True)
class LMReply(Message):
    """The host's reply to the ``LMRequest`` of ``id``."""

    type: ClassVar[str] = "lm_reply"
    id: int
    reply: dict[str, Any]


# -- what a stopped block reports ---------------------------------------------------------------
#: The model reads these: every environment builds its stopped-block errors from them.
CANCELLED = "Cancelled: the call tree was stopped while this block ran"
KEPT = "your variables are kept"
RESTARTED = "the REPL was restarted: `context` is back, your other variables are gone"


def timed_out(limit_s: float) -> str:
    """The cause of a block stopped at its time limit."""
    return f"TimeoutError: the block ran past {limit_s:g}s"


def process_died(detail: str) -> str:
    """A block whose REPL process died under it (killed, out of memory)."""
    return f"ProcessDied: {detail} (out of memory or killed); {RESTARTED}"


def channel_broke(problem: str) -> str:
    """A block after which the REPL's replies could not be trusted (an out-of-turn or
    malformed frame): the REPL is replaced."""
    return f"ProtocolError: {problem}; {RESTARTED}"
