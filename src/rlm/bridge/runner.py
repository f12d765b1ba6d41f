"""The REPL process: runs ``guest.GuestRuntime`` driven by control frames on stdin/stdout.

Started by a process-based environment (``python runner.py``).  The control channel is
private copies of fd 0 and 1; the real fd 0 then reads /dev/null and fd 1 writes to
stderr, so nothing model code prints (even from C code or child processes) can corrupt the
protocol.  LM requests go to the host's ``LMServer`` on a new connection each, which opens
with the preamble of the token from the ``init`` message (``protocol.preamble``); when
``init`` names no ``lm_address`` they travel on the control channel itself (``lm_request``
out, ``lm_reply`` in), for guests without a network.  Standard library only; shipped as a
file.

The messages and their replies are ``protocol.CONTROL`` (``init``, ``tools``, ``set_var``,
``exec``, ``shutdown``); ``ControlHandler`` answers them whatever carries the frames (this
process's pipe, or files in the ``ipython`` environment's kernel).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

try:  # inside the package
    from rlm.bridge import guest, protocol, values
except ImportError:  # shipped as plain files next to this one
    import guest  # type: ignore[no-redef]
    import protocol  # type: ignore[no-redef]
    import values  # type: ignore[no-redef]


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def load_value(path: str, fmt: str, read: Callable[[str], bytes] = read_bytes) -> Any:
    """Read a value the host wrote with ``rlm.environments.files.write_value``; ``read``
    returns a file's bytes (a WebAssembly guest reads host files through its runtime)."""
    return values.decode_value(fmt, read(path))


def lm_caller(address: Any, token: str) -> guest.Call:
    """The ``call`` of a ``GuestRuntime`` that reaches the host's ``LMServer``: each call
    opens a connection with the preamble of ``token`` (``protocol.preamble``), sends its
    request frame and waits, without a time limit (an LM call may take minutes), for the
    reply.  A failure of any kind comes back as a ``BridgeProtocolError`` reply."""
    target = address if isinstance(address, str) else (address[0], int(address[1]))

    def call(message: dict[str, Any]) -> dict[str, Any]:
        try:
            return protocol.request(target, message, token=token)
        except Exception as exc:  # model code gets an error reply, never a crash
            return protocol.error_reply("BridgeProtocolError",
                                        f"the host's LM handler cannot be reached: {exc}")

    return call


def control_caller(stream: protocol.Stream) -> guest.Call:
    """The ``call`` of a ``GuestRuntime`` whose LM requests travel on the control channel:
    an ``lm_request {id}`` frame out, the matching ``lm_reply {id}`` back.

    Calls from several threads run concurrently: each sends its request, and whichever
    waiting thread finds no one reading becomes the reader, handing each reply to the
    thread that waits for its id (the host answers in any order)."""
    send_lock = threading.Lock()
    arrived = threading.Condition()
    replies: dict[int, dict[str, Any]] = {}
    state: dict[str, Any] = {"reading": False, "broken": None}
    ids = itertools.count(1)

    def failure(text: str) -> dict[str, Any]:
        return protocol.error_reply("BridgeProtocolError",
                                    f"no LM reply on the control channel: {text}")

    def read_one() -> None:  # called holding ``arrived``, returns holding it
        arrived.release()
        try:
            frame: dict[str, Any] | None = protocol.recv(stream)
            broken = None
        except Exception as exc:  # the waiting threads must hear of any failure
            frame, broken = None, f"{type(exc).__name__}: {exc}"
        finally:
            arrived.acquire()
            state["reading"] = False
        if frame is not None and frame.get("type") == protocol.LMReply.type \
                and isinstance(frame.get("id"), int):
            try:
                replies[frame["id"]] = protocol.LMReply.from_dict(frame).reply
            except protocol.ProtocolError as exc:  # that call fails, the channel goes on
                replies[frame["id"]] = failure(str(exc))
        else:
            state["broken"] = broken or f"an unexpected frame {frame!r:.200}"
        arrived.notify_all()

    def call(message: dict[str, Any]) -> dict[str, Any]:
        ident = next(ids)
        try:
            with send_lock:
                protocol.send(stream, protocol.LMRequest(ident, message).to_dict())
        except (OSError, ValueError, protocol.ProtocolError) as exc:
            return failure(str(exc))
        with arrived:
            while ident not in replies:
                if state["broken"] is not None:
                    return failure(state["broken"])
                if state["reading"]:
                    arrived.wait()
                else:
                    state["reading"] = True
                    read_one()
            return replies.pop(ident)

    return call


class ControlHandler:
    """Answers the host's control messages (``protocol.CONTROL``) with one
    ``GuestRuntime``, made by ``init``.  Knows nothing of transports: ``serve`` feeds it
    the frames of a pipe, the ``ipython`` environment those its kernel reads from files.

    ``stream`` is the control channel LM requests travel on when ``init`` names no
    ``lm_address``; ``read`` returns a file's bytes (``set_var``).  ``handle`` never raises
    for what a frame holds: a bad frame or a failure is an ``error`` reply.
    """

    def __init__(self, stream: protocol.Stream | None = None,
                 read: Callable[[str], bytes] = read_bytes) -> None:
        self.stream = stream
        self.read = read
        self.runtime: guest.GuestRuntime | None = None
        #: Set by ``shutdown``: the caller stops once the reply is sent.
        self.done = False
        self.ops: dict[str, Callable[[Any], dict[str, Any]]] = {
            "init": self._init, "tools": self._tools, "set_var": self._set_var,
            "exec": self._exec, "shutdown": self._shutdown,
        }

    def handle(self, frame: dict[str, Any]) -> dict[str, Any]:
        try:
            message = protocol.control_message(frame)
            if self.runtime is None and not isinstance(message, protocol.Init):
                raise protocol.ProtocolError("init first")
            return self.ops[message.type](message)
        except Exception as exc:  # report, keep serving: the host decides what to do
            return protocol.Failure.of(exc).to_dict()

    def handle_file(self, path: str) -> str:
        """``handle`` for a frame written to ``path`` as JSON (removed once read): the
        reply as ASCII JSON, which any carrier (Jupyter's packer) passes unchanged."""
        try:
            frame = protocol.decode(self.read(path))
            os.remove(path)
        except (OSError, protocol.ProtocolError) as exc:
            return json.dumps(protocol.Failure.of(exc).to_dict())
        return json.dumps(self.handle(frame), default=str)

    def _init(self, message: protocol.Init) -> dict[str, Any]:
        if message.lm_address:
            call = lm_caller(message.lm_address, message.token)
        elif self.stream is not None:
            call = control_caller(self.stream)
        else:
            raise protocol.ProtocolError("init names no lm_address, and there is no "
                                         "control channel for LM requests")
        self.runtime = guest.GuestRuntime(call, capture_limit=message.capture_limit)
        return protocol.Ok().to_dict()

    def _tools(self, message: protocol.Tools) -> dict[str, Any]:
        assert self.runtime is not None
        self.runtime.load_tools(dict(message.sources))
        return protocol.Ok().to_dict()

    def _set_var(self, message: protocol.SetVar) -> dict[str, Any]:
        assert self.runtime is not None
        self.runtime.set_variable(message.name,
                                  load_value(message.file, message.format, self.read))
        return protocol.Ok().to_dict()

    def _exec(self, message: protocol.Exec) -> dict[str, Any]:
        assert self.runtime is not None
        return protocol.result_frame(self.runtime.run_cell(message.code))

    def _shutdown(self, message: protocol.Shutdown) -> dict[str, Any]:
        self.done = True
        return protocol.Ok().to_dict()


def serve(stream: protocol.Stream, read: Callable[[str], bytes] = read_bytes) -> None:
    """Answer the control frames of ``stream`` until ``shutdown`` or the end of the stream."""
    handler = ControlHandler(stream, read)
    protocol.send(stream, protocol.Ready(os.getpid()).to_dict())
    while not handler.done:
        try:
            frame = protocol.recv(stream)
        except EOFError:
            return
        reply = handler.handle(frame)
        try:
            protocol.send(stream, reply)
        except protocol.ProtocolError as exc:  # too big, or not JSON: say so, keep serving
            protocol.send(stream, protocol.Failure.of(
                "ProtocolError", f"the reply cannot be sent: {exc}"[:2000]).to_dict())


def apply_limits() -> None:
    """Lower this process's own rlimits from ``RLM_LIMITS`` (a JSON object, as
    ``rlm.environments.layout.ProcessLimits.rlimits`` writes it), soft and hard."""
    raw = os.environ.pop("RLM_LIMITS", "")
    if not raw:
        return
    import resource

    names = {"memory_bytes": resource.RLIMIT_AS, "cpu_s": resource.RLIMIT_CPU,
             "processes": resource.RLIMIT_NPROC, "file_bytes": resource.RLIMIT_FSIZE,
             "core_bytes": resource.RLIMIT_CORE}
    for key, value in json.loads(raw).items():
        if value is not None and key in names:
            resource.setrlimit(names[key], (int(value), int(value)))


def main() -> None:
    apply_limits()
    control_in = os.fdopen(os.dup(0), "rb", buffering=0)
    control_out = os.fdopen(os.dup(1), "wb", buffering=0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    serve(protocol.FileStream(control_in, control_out))


if __name__ == "__main__":
    main()
