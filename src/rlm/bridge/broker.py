"""The HTTP broker: the REPL of a sandbox the host cannot be reached from, served over HTTP.

It runs in the sandbox (``python broker.py --port P --token-file F``) next to ``guest.py``,
whose ``GuestRuntime`` it drives; standard library only.  The host makes every connection:
it drives the REPL and long-polls for the sandbox code's LM requests, which it answers
with its own LM handler, so no key enters the sandbox.

Every endpoint needs the token (``Authorization: Bearer T`` or ``X-RLM-Token: T``), else
401; bodies and replies are JSON.  The control operations (``protocol.CONTROL``; ``init`` is
the launch, with ``BrokerSettings`` on its command line) are ``POST /<op>``, the fields as
the body: ``/exec {code, timeout_s?}`` -> ``{stdout, stderr, error, final, elapsed_s,
notes}`` (500 with ``{error: {type, message}}`` when the runtime itself broke, not the
model's code); ``/set_var?name=N&format=F`` with the value's own bytes as the body
(``values.py``; streamed, up to ``MAX_VALUE_BYTES``); ``/tools {sources}`` defines the
user's tools from their code (422 when one fails); ``/shutdown`` (the process exits).
``GET /health`` -> ``{ok, pid, version}``; ``POST /interrupt`` stops the cell under way as
its time limit would (the host's run was cancelled or hit a limit).  LM requests: ``GET
/pending?wait=S`` -> ``{requests: [{id, message}], shutdown}`` waits up to S seconds (at
most half the host timeout); ``POST /respond {id, reply}``, 409 when no call waits for
``id`` any more.

Bounds: an LM request unanswered after ``request_timeout_s`` fails in the sandbox as an
``LMQueryError``; so does every waiting one once the host has not polled for
``host_timeout_s`` (it is gone), and a new one fails at once.  A cell runs in a worker
thread; past its limit a ``CellTimeout`` is raised in it, repeatedly for ``grace_s``
seconds (this stops Python code, not a blocking C call such as ``time.sleep``).  A cell
still running then is abandoned: it keeps running in the background until the sandbox ends,
and the REPL is replaced by a fresh one holding the host's variables again.  A C call that
holds the GIL (one huge allocation) stalls the broker too until it returns; the host's own
timeout then reports the sandbox as not answering.  After every cell the ``builtins``
module, which the cell shares with the broker's HTTP code, is put back as it was.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import hmac
import itertools
import json
import os
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

if __package__:
    from rlm.bridge import guards, guest, protocol, values
else:  # run as a file shipped next to guest.py
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import guards  # type: ignore[no-redef]
    import guest  # type: ignore[no-redef]
    import protocol  # type: ignore[no-redef]
    import values  # type: ignore[no-redef]

VERSION = 1
MAX_BODY_BYTES = 1 << 30
MAX_VALUE_BYTES = 1 << 36  # a variable's body (POST /set_var), read in chunks
TOKEN_ENV = "RLM_BROKER_TOKEN"


@dataclass(frozen=True)
class BrokerSettings:
    """How the broker runs its REPL (see the bounds above), from the host's ``to_argv`` on
    its command line (``from_argv`` reads it back)."""

    block_timeout_s: float = 300.0
    grace_s: float = 2.0
    request_timeout_s: float = 900.0
    host_timeout_s: float = 60.0
    capture_limit: int = protocol.CAPTURE_LIMIT

    def to_argv(self) -> list[str]:
        return [arg for field in fields(self)
                for arg in (_flag(field.name), str(getattr(self, field.name)))]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for field in fields(cls):
            parser.add_argument(_flag(field.name), dest=field.name, default=field.default,
                                type=type(field.default))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BrokerSettings:
        """The settings of a command line parsed with ``add_arguments``."""
        return cls(**{field.name: getattr(args, field.name) for field in fields(cls)})

    @classmethod
    def from_argv(cls, argv: Sequence[str]) -> BrokerSettings:
        """The settings in ``argv`` (other arguments are ignored), defaults for the rest."""
        parser = argparse.ArgumentParser(add_help=False)
        cls.add_arguments(parser)
        return cls.from_args(parser.parse_known_args(list(argv))[0])


def _flag(name: str) -> str:  # block_timeout_s -> --block-timeout
    return "--" + name.removesuffix("_s").replace("_", "-")


_BUILTINS = dict(vars(builtins))  # as they were before any cell: the broker's own code uses them


def _restore_builtins() -> None:
    """Undo what a cell did to the ``builtins`` module this process shares with the broker."""
    current = vars(builtins)
    for name in set(current) - set(_BUILTINS):
        del current[name]
    current.update(_BUILTINS)


class CellTimeout(BaseException):
    """Raised inside a cell that ran past its time limit (``except Exception`` misses it)."""


class ReplBroke(Exception):
    """The REPL runtime itself failed running a cell (not the model's code): HTTP 500."""


def _failure(message: str) -> dict[str, Any]:  # raised in the sandbox as an LMQueryError
    return protocol.error_reply("BridgeProtocolError", message)


def _interrupt(thread: threading.Thread) -> None:
    try:
        import ctypes
    except ImportError:  # no ctypes in this Python: the cell can only be abandoned
        return
    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident),
                                                   ctypes.py_object(CellTimeout))


@dataclass(slots=True)
class _Request:
    id: str
    message: dict[str, Any]
    reply: dict[str, Any] | None = None


class Broker:
    """The REPL and the queue of LM requests behind the HTTP endpoints (thread-safe)."""

    def __init__(self, token: str, settings: BrokerSettings | None = None) -> None:
        self.token = token
        self.settings = settings or BrokerSettings()
        self.closing = False
        self._cond = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._waiting: dict[str, _Request] = {}
        self._ids = itertools.count(1)
        self._last_poll = time.monotonic()
        self._control = threading.Lock()
        self._interrupted = threading.Event()
        self._variables: dict[str, Any] = {}
        self._tools: dict[str, str] = {}
        self.runtime = self._new_runtime()

    def authorized(self, headers: Any) -> bool:
        auth = headers.get("Authorization", "")
        given = auth[7:] if auth.startswith("Bearer ") else headers.get("X-RLM-Token", "")
        return hmac.compare_digest(given.encode(), self.token.encode())

    # -- LM requests of the sandbox code --------------------------------------------------
    def _host_gone(self) -> bool:
        return time.monotonic() - self._last_poll > self.settings.host_timeout_s

    def enqueue(self, message: dict[str, Any]) -> dict[str, Any]:
        """``GuestRuntime``'s ``call``: queue ``message`` for the host and wait for its reply."""
        request = _Request(str(next(self._ids)), message)
        settings = self.settings
        deadline = time.monotonic() + settings.request_timeout_s
        with self._cond:
            if self._host_gone():
                return _failure(f"the host has not polled for {settings.host_timeout_s:g}s: gone")
            self._queue.append(request)
            self._waiting[request.id] = request
            self._cond.notify_all()
            try:
                while request.reply is None:
                    left = deadline - time.monotonic()
                    if self.closing:
                        return _failure("the sandbox's broker is shutting down")
                    if left <= 0:
                        return _failure(f"no reply from the host within "
                                        f"{settings.request_timeout_s:g}s")
                    if self._host_gone():
                        return _failure(f"the host stopped polling for {settings.host_timeout_s:g}s"
                                        " and is taken to be gone")
                    self._cond.wait(min(0.25, left))
                return request.reply
            finally:
                self._waiting.pop(request.id, None)
                with contextlib.suppress(ValueError):
                    self._queue.remove(request)

    def pending(self, wait_s: float) -> list[dict[str, Any]]:
        """The host's long poll: queued requests, waiting up to ``wait_s`` for the first."""
        deadline = time.monotonic() + max(0.0, min(wait_s, self.settings.host_timeout_s / 2))
        with self._cond:
            self._last_poll = time.monotonic()
            while not self._queue and not self.closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken = [self._queue.popleft() for _ in range(min(len(self._queue), 256))]
        return [{"id": request.id, "message": request.message} for request in taken]

    def respond(self, request_id: str, reply: Any) -> bool:
        with self._cond:
            request = self._waiting.get(request_id)
            if request is None:
                return False
            request.reply = reply if isinstance(reply, dict) else _failure("malformed reply")
            self._cond.notify_all()
            return True

    def shutdown(self) -> None:
        with self._cond:
            self.closing = True
            self._cond.notify_all()

    # -- the REPL ---------------------------------------------------------------------------
    def _new_runtime(self) -> guest.GuestRuntime:
        runtime = guest.GuestRuntime(self.enqueue, capture_limit=self.settings.capture_limit)
        runtime.load_tools(self._tools)
        for name, value in self._variables.items():
            runtime.set_variable(name, value)
        return runtime

    def load_tools(self, sources: dict[str, str]) -> None:
        """Define tools from code now and in every replacement REPL."""
        with self._control:
            self.runtime.load_tools(sources)
            self._tools.update(sources)

    def set_variable(self, name: str, value: Any) -> None:
        with self._control:
            self._variables[name] = value
            self.runtime.set_variable(name, value)

    def _supervise(self, work: Callable[[guest.GuestRuntime], Any], limit: float
                   ) -> tuple[str, Any]:
        """Run ``work`` in a worker thread: ``("done", value)``, ``("failed", exception)``,
        ``("stopped", value or None)`` once interrupted past ``limit``, or
        ``("abandoned", None)``."""
        box: dict[str, Any] = {}
        done = threading.Event()
        runtime = self.runtime

        def run() -> None:
            try:
                box["value"] = work(runtime)
            except BaseException as exc:  # reported by the supervisor, not lost in a thread
                box["failure"] = exc
            finally:
                done.set()

        worker = threading.Thread(target=run, name="rlm-cell", daemon=True)
        worker.start()
        try:
            deadline = time.monotonic() + limit
            while not done.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline or self._interrupted.is_set():
                    break
            if done.is_set():
                return ("failed", box["failure"]) if "failure" in box else ("done", box["value"])
            give_up = time.monotonic() + self.settings.grace_s
            while not done.is_set() and time.monotonic() < give_up:
                _interrupt(worker)
                done.wait(0.05)
            if done.is_set():
                return "stopped", box.get("value")
            self.runtime = self._new_runtime()
            return "abandoned", None
        finally:
            _restore_builtins()
            self.runtime.namespace["__builtins__"] = guards.guarded_builtins()

    def interrupt(self) -> None:
        """Stop the cell under way (``POST /interrupt``)."""
        self._interrupted.set()

    def execute(self, code: str, timeout_s: float | None = None) -> dict[str, Any]:
        """Run one cell under ``timeout_s`` (default ``block_timeout_s``); ``ReplBroke``
        when the runtime itself failed."""
        limit = self.settings.block_timeout_s if timeout_s is None else float(timeout_s)
        started = time.monotonic()
        with self._control:
            self._interrupted.clear()
            state, result = self._supervise(lambda runtime: runtime.run_cell(code), limit)
        if state == "done":
            return result
        if state == "failed":
            raise ReplBroke(f"{type(result).__name__}: {result}") from result
        why = protocol.CANCELLED if self._interrupted.is_set() else protocol.timed_out(limit)
        error = f"{why} and it was stopped; " + (
            protocol.KEPT if state == "stopped" else f"it did not stop, so {protocol.RESTARTED}")
        return {"stdout": "", "stderr": "", "notes": [], **(result or {}), "final": None,
                "elapsed_s": time.monotonic() - started, "error": error}


_OK: dict[str, Any] = {"ok": True}
_Reply = tuple[int, dict[str, Any]]


def _exec(broker: Broker, message: protocol.Exec, body: bytes) -> _Reply:
    try:
        return 200, broker.execute(message.code, message.timeout_s)
    except ReplBroke as exc:  # the host raises it as an EnvError, the model never sees it
        return 500, protocol.error_reply(exc)


def _tools(broker: Broker, message: protocol.Tools, body: bytes) -> _Reply:
    try:
        broker.load_tools(dict(message.sources))
    except RuntimeError as exc:  # a tool's code failed: the host's start fails with this
        return 422, {"error": str(exc)}
    return 200, _OK


def _set_var(broker: Broker, message: protocol.SetVar, body: bytes) -> _Reply:
    broker.set_variable(message.name, values.decode_value(message.format, body))
    return 200, _OK


def _shutdown(broker: Broker, message: protocol.Shutdown, body: bytes) -> _Reply:
    broker.shutdown()
    return 200, _OK


#: ``POST /<op>``: the control operations a broker serves (``init`` is its launch).
CONTROL: dict[str, Callable[[Broker, Any, bytes], _Reply]] = {
    "tools": _tools, "set_var": _set_var, "exec": _exec, "shutdown": _shutdown}


def _route(broker: Broker, endpoint: str, body: bytes, query: dict[str, list[str]]) -> _Reply:
    """Serve one request; ``ValueError`` (a ``ProtocolError``, a bad JSON body...),
    ``KeyError`` or ``TypeError`` for a malformed one."""
    method, _, path = endpoint.partition(" ")
    op = path.removeprefix("/")
    if method == "POST" and op in CONTROL:
        given = ({key: value[0] for key, value in query.items()} if op == "set_var"
                 else _json_object(body))
        return CONTROL[op](broker, protocol.control_message({**given, "type": op}), body)
    if endpoint == "GET /health":
        return 200, {"ok": True, "pid": os.getpid(), "version": VERSION}
    if endpoint == "POST /interrupt":
        broker.interrupt()
        return 200, _OK
    if endpoint == "GET /pending":
        wait_s = float(query.get("wait", ["0"])[0])
        return 200, {"requests": broker.pending(wait_s), "shutdown": broker.closing}
    if endpoint == "POST /respond":
        payload = _json_object(body)
        if broker.respond(str(payload["id"]), payload["reply"]):
            return 200, _OK
        return 409, {"error": "no call waits for this id (it timed out or was answered)"}
    return 404, {"error": f"no endpoint {endpoint}"}


def _json_object(body: bytes) -> dict[str, Any]:
    payload = json.loads(body) if body else {}
    if not isinstance(payload, dict):
        raise ValueError("the body must be a JSON object")
    return payload


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body are written separately: without TCP_NODELAY each reply waits for
    # the client's delayed ACK (~40 ms)
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the broker's streams belong to the REPL."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        broker = self.server.broker
        url = urlsplit(self.path)
        length = self.headers.get("Content-Length") or "0"
        size = int(length) if length.isdigit() else -1
        if not broker.authorized(self.headers):
            self.close_connection = True
            if 0 < size <= 65536:  # drained, else closing on unread bytes may reset the reply
                self.rfile.read(size)
            return self._send(401, {"error": "missing or wrong token"})
        limit = MAX_VALUE_BYTES if (method, url.path) == ("POST", "/set_var") else MAX_BODY_BYTES
        if not 0 <= size <= limit:
            self.close_connection = True
            return self._send(413, {"error": f"a body is 0 to {limit} bytes"})
        try:  # read into one buffer, a piece at a time: a value may be gigabytes
            body = values.receive(self.rfile.readinto, size)
        except EOFError as exc:
            self.close_connection = True
            return self._send(400, {"error": str(exc)})
        try:
            status, reply = _route(broker, f"{method} {url.path}", body, parse_qs(url.query))
        except (KeyError, TypeError, ValueError, protocol.ProtocolError) as exc:
            return self._send(400, {"error": f"bad request: {type(exc).__name__}: {exc}"})
        self._send(status, reply)
        if url.path == "/shutdown":
            threading.Thread(target=self.server.shutdown, daemon=True).start()

    def _send(self, status: int, reply: dict[str, Any]) -> None:
        data = protocol.to_json(reply)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:  # tell the client, or it reuses a closed connection
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the host hung up; it will see the failure on its side
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    broker: Broker


def _read_token(path: str | None) -> str:
    if path:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
        with contextlib.suppress(OSError):
            os.unlink(path)  # nothing else in the sandbox needs to find it
    else:
        token = os.environ.pop(TOKEN_ENV, "")
    if not token:
        sys.exit(f"rlm broker: no token: pass --token-file or set {TOKEN_ENV}")
    return token


def _watch(pipe: Any, broker: Broker, server: _Server) -> None:
    """End with the host: its end of our stdin closes when it dies."""
    while pipe.read(4096):
        pass
    broker.shutdown()
    server.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="rlm's REPL broker, run inside a sandbox")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--bind", default="127.0.0.1", help="0.0.0.0 behind a cloud's tunnel")
    parser.add_argument("--token-file", help=f"read the token here and delete the file "
                                             f"(default: ${TOKEN_ENV}); never on argv")
    BrokerSettings.add_arguments(parser)
    parser.add_argument("--exit-on-stdin-eof", action="store_true")
    parser.add_argument("--remove-on-exit", help="a folder to delete when the broker ends")
    args = parser.parse_args(argv)
    broker = Broker(_read_token(args.token_file), BrokerSettings.from_args(args))
    server = _Server((args.bind, args.port), _Handler)
    server.broker = broker
    ready = {"rlm_broker": VERSION, "port": server.server_address[1], "pid": os.getpid()}
    print(json.dumps(ready), flush=True)
    os.dup2(2, 1)  # whatever runs here prints to stderr, never into a pipe nobody reads
    if args.exit_on_stdin_eof:
        pipe = os.fdopen(os.dup(0), "rb", buffering=0)
        threading.Thread(target=_watch, args=(pipe, broker, server), daemon=True).start()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the REPL's stdin reads nothing
    os.close(null)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        if args.remove_on_exit:  # even when the host died and cannot clean up
            shutil.rmtree(args.remove_on_exit, ignore_errors=True)
        sys.stderr.flush()
        os._exit(0)  # abandoned cells must not keep the process alive


if __name__ == "__main__":
    main()
