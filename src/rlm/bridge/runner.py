"""The REPL process: runs ``guest.GuestRuntime`` driven by frames on stdin/stdout.

Started by a process-based environment (``python runner.py``).  The control channel is
private copies of fd 0 and 1; the real fd 0 then reads /dev/null and fd 1 writes to
stderr, so nothing model code prints (even from C code or child processes) can corrupt the
protocol.  LM requests go to the host's ``LMServer`` on a new connection each, which opens
with the preamble of the token from the ``init`` message (``protocol.preamble``); when
``init`` names no ``lm_address`` they travel on the control channel itself (``lm_request
{id, request}`` out, ``lm_reply {id, reply}`` in), for guests without a network.
Standard library only; shipped as a file.

Control messages (host -> runner): ``init {lm_address, token}``, ``tools {sources}``,
``set_var {name, file, format}``, ``exec {code}``, ``shutdown``.  Replies: ``ready``,
``ok``, ``result {stdout, stderr, error, final, elapsed_s, notes}``, ``error {message}``.
(A ``FINAL(...)`` line the model writes outside code is sent as an ``exec`` of that line.)
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
    from rlm.bridge import guest, protocol
except ImportError:  # shipped as plain files next to this one
    import guest  # type: ignore[no-redef]
    import protocol  # type: ignore[no-redef]


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def load_value(path: str, fmt: str, read: Callable[[str], bytes] = read_bytes) -> Any:
    """Read a value the host wrote with ``rlm.environments.files.write_value``; ``read``
    returns a file's bytes (a WebAssembly guest reads host files through its runtime)."""
    data = read(path)
    if fmt == "bytes":
        return data
    text = data.decode("utf-8", "surrogatepass")  # as written: lone surrogates kept
    return text if fmt == "text" else json.loads(text)


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
            return {"error": {"type": "BridgeProtocolError",
                              "message": f"the host's LM handler cannot be reached: {exc}"}}

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
        return {"error": {"type": "BridgeProtocolError",
                          "message": f"no LM reply on the control channel: {text}"}}

    def read_one() -> None:  # called holding ``arrived``, returns holding it
        arrived.release()
        try:
            frame = protocol.recv(stream)
        except Exception as exc:  # the waiting threads must hear of any failure
            frame = {"type": "error", "message": f"{type(exc).__name__}: {exc}"}
        finally:
            arrived.acquire()
            state["reading"] = False
        if frame.get("type") == "lm_reply" and isinstance(frame.get("id"), int):
            reply = frame.get("reply")
            replies[frame["id"]] = (reply if isinstance(reply, dict) else
                                    failure(f"a reply that is not an object: {reply!r:.100}"))
        else:
            state["broken"] = f"{frame.get('type')} {frame.get('message', '')}".strip()
        arrived.notify_all()

    def call(message: dict[str, Any]) -> dict[str, Any]:
        ident = next(ids)
        try:
            with send_lock:
                protocol.send(stream, {"type": "lm_request", "id": ident, "request": message})
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


def serve(stream: protocol.Stream, read: Callable[[str], bytes] = read_bytes) -> None:
    runtime: guest.GuestRuntime | None = None
    protocol.send(stream, {"type": "ready", "pid": os.getpid(), "version": protocol.VERSION})
    while True:
        try:
            message = protocol.recv(stream)
        except EOFError:
            return
        kind = message.get("type")
        try:
            if kind == "init":
                call = (lm_caller(message["lm_address"], message["token"])
                        if message.get("lm_address") else control_caller(stream))
                runtime = guest.GuestRuntime(call, capture_limit=int(message.get("capture_limit",
                                                                                 2_000_000)))
                reply: dict[str, Any] = {"type": "ok"}
            elif runtime is None:
                reply = {"type": "error", "message": "init first"}
            elif kind == "tools":
                runtime.load_tools(dict(message["sources"]))
                reply = {"type": "ok"}
            elif kind == "set_var":
                value = load_value(message["file"], message["format"], read)
                runtime.set_variable(message["name"], value)
                reply = {"type": "ok"}
            elif kind == "exec":
                reply = {"type": "result", **runtime.run_cell(message["code"])}
            elif kind == "shutdown":
                protocol.send(stream, {"type": "ok"})
                return
            else:
                reply = {"type": "error", "message": f"unknown message type {kind!r}"}
        except Exception as exc:  # report, keep serving: the host decides what to do
            reply = {"type": "error", "message": f"{type(exc).__name__}: {exc}"}
        try:
            protocol.send(stream, reply)
        except protocol.ProtocolError as exc:  # too big, or not JSON: say so, keep serving
            protocol.send(stream, {"type": "error", "message": f"the reply cannot be sent: "
                                                               f"{exc}"[:2000]})


def apply_limits() -> None:
    """Lower this process's own rlimits from ``RLM_LIMITS`` (a JSON object), soft and hard."""
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
