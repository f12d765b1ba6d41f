"""REPLs in a separate process: the runner driven over pipes, LM calls over a socket.

``ProcessEnvironment`` holds everything the process-based environments share (scratch
directory, shipping the runner, the control channel, per-block wall-clock kill and restart,
the ``LMServer``); subclasses only say how the process is launched.  ``SubprocessEnvironment``
launches a plain child process.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from rlm.bridge import protocol
from rlm.bridge.tcp import LMServer
from rlm.core.context import FolderContext
from rlm.core.tools import Tool, shipped_tools
from rlm.environments.base import Environment, HostCall
from rlm.errors import EnvError, EnvStartError
from rlm.types import ExecResult

__all__ = ["ProcessEnvironment", "SubprocessEnvironment", "ship_runner", "write_value"]

RUNNER_FILES = ("guest.py", "protocol.py", "runner.py", "broker.py")
_SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
             "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}


def ship_runner(directory: Path) -> Path:
    """Copy the guest runtime (``RUNNER_FILES``) into ``directory``, created; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in RUNNER_FILES:
        source = resources.files("rlm.bridge").joinpath(name)
        (directory / name).write_bytes(source.read_bytes())
    return directory


def write_value(directory: Path, name: str, value: Any, *, owner: str) -> tuple[Path, str]:
    """Hand a value over by a file in ``directory``, never as a code literal; return the
    file and its format (as ``runner.load_value`` reads it).  ``owner`` names the
    environment in the ``EnvError`` raised for a value JSON cannot hold."""
    base = directory / f"var-{name}"
    if isinstance(value, str):
        path = base.with_suffix(".txt")
        path.write_text(value, encoding="utf-8")
        return path, "text"
    if isinstance(value, bytes | bytearray | memoryview):
        path = base.with_suffix(".bin")
        path.write_bytes(bytes(value))
        return path, "bytes"
    if isinstance(value, FolderContext):
        value = dict(value.items())
    path = base.with_suffix(".json")
    try:
        path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    except (TypeError, ValueError) as exc:
        raise EnvError(f"{owner}: variable {name!r} of type {type(value).__name__} "
                       "cannot be sent to a separate process (use str, bytes, list, dict)"
                       ) from exc
    return path, "json"


class ProcessEnvironment(Environment):
    """A runner process per REPL.

    - ``block_timeout_s``: wall-clock limit of one block; past it the process is killed and
      restarted (variables set by the host are loaded again; the model's are lost) and the
      model is told so in the block's error.
    - ``memory_mb``, ``cpu_s``, ``max_processes``, ``max_file_mb``: rlimits of the process.
    - The process gets a fresh scratch directory as its working directory and home, and an
      environment with no variable of the host (no API key can leak in).
    """

    supports_persistence = True
    supports_timeout = True
    use_unix_socket = False
    #: LM requests travel on the control channel (``lm_request``/``lm_reply`` frames, see
    #: ``rlm.bridge.runner``) instead of a socket: for guests with no network at all.
    lm_over_control = False
    #: Where the process sees the scratch directory; ``None``: at its host path.
    guest_root: str | None = None

    def __init__(self, *, block_timeout_s: float = 300.0, memory_mb: int | None = 4096,
                 cpu_s: int | None = None, max_processes: int | None = 256,
                 max_file_mb: int | None = 1024, capture_limit: int = 2_000_000,
                 start_timeout_s: float = 60.0) -> None:
        self.block_timeout_s = block_timeout_s
        self.limits = {
            "memory_bytes": None if memory_mb is None else memory_mb << 20,
            "cpu_s": cpu_s, "processes": max_processes,
            "file_bytes": None if max_file_mb is None else max_file_mb << 20, "core_bytes": 0,
        }
        self.capture_limit = capture_limit
        self.start_timeout_s = start_timeout_s
        self.scratch: Path | None = None
        self._server: LMServer | None = None
        self._call: HostCall | None = None
        self._write_lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._variables: dict[str, tuple[str, str]] = {}
        self._tool_sources: dict[str, str] = {}
        self._lock = threading.Lock()
        self._closed = False

    # -- hooks for subclasses -----------------------------------------------------------------
    @classmethod
    def probe(cls) -> None:
        """Raise ``EnvStartError`` saying why this machine cannot run the environment (a
        missing tool...); checked by ``unavailable_reason`` and before each start."""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            cls.probe()
        except EnvStartError as exc:
            return str(exc)
        return None

    def launch_command(self, runner: Path) -> list[str]:
        """The command that starts ``runner`` (a host path inside the scratch directory)."""
        return [sys.executable, "-I", "-u", str(runner)]

    def guest_path(self, host_path: Path) -> str:
        """How the process sees a file of the scratch directory: the same path, or the path
        under ``guest_root`` where the scratch directory is mounted."""
        if self.guest_root is None:
            return str(host_path)
        assert self.scratch is not None
        return str(PurePosixPath(self.guest_root) / Path(host_path).relative_to(self.scratch))

    def guest_lm_address(self, server: LMServer) -> Any:
        """The LM server's address as the process sees it (its socket is in the scratch
        directory when the process has a root of its own)."""
        if self.guest_root is None:
            return server.address
        return self.guest_path(Path(str(server.address)))

    def process_killed(self) -> None:
        """Called after the process was killed: remove what it started outside its process
        group (a container...)."""

    def process_env(self) -> dict[str, str]:
        assert self.scratch is not None
        return {**_SAFE_ENV, "HOME": self.guest_path(self.scratch),
                "TMPDIR": self.guest_path(self.scratch / "tmp"),
                "RLM_LIMITS": json.dumps(self.limits)}

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, call: HostCall, tools: Mapping[str, Tool] | None = None) -> None:
        if self._proc is not None:
            return
        if self._closed:
            raise EnvError("the environment is closed")
        self.probe()
        self._tool_sources = shipped_tools(tools, self.name)
        self.scratch = Path(tempfile.mkdtemp(prefix="rlm-env-"))
        (self.scratch / "tmp").mkdir()
        ship_runner(self.scratch / ".rlm")
        self._call = call
        if not self.lm_over_control:
            unix = self.scratch / ".rlm" / "lm.sock" if self.use_unix_socket else None
            self._server = LMServer(call, unix_path=unix)
            self._server.start()
        self._spawn()

    def _spawn(self) -> None:
        assert self.scratch is not None
        self._replies = queue.Queue()
        try:
            self._proc = subprocess.Popen(
                self.launch_command(self.scratch / ".rlm" / "runner.py"),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                cwd=self.scratch, env=self.process_env(), start_new_session=True,
            )
        except OSError as exc:
            raise EnvStartError(f"{self.name}: cannot start the REPL process: {exc}") from exc
        proc = self._proc
        threading.Thread(target=self._read_replies, args=(proc,), daemon=True,
                         name=f"rlm-{self.name}-reader").start()
        self._expect("ready", self.start_timeout_s, starting=True)
        lm = ({} if self._server is None else
              {"lm_address": self.guest_lm_address(self._server), "token": self._server.token})
        self._roundtrip({"type": "init", **lm, "capture_limit": self.capture_limit},
                        self.start_timeout_s, starting=True)
        if self._tool_sources:
            try:
                self._roundtrip({"type": "tools", "sources": self._tool_sources},
                                self.start_timeout_s, starting=True)
            except EnvStartError:
                raise
            except EnvError as exc:  # a tool's code failed in the guest
                self._kill()
                raise EnvStartError(str(exc)) from None
        for name, (path, fmt) in self._variables.items():
            self._roundtrip({"type": "set_var", "name": name, "file": path, "format": fmt},
                            self.start_timeout_s, starting=True)

    def _read_replies(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        stream = protocol.FileStream(proc.stdout, None)
        while True:
            try:
                message = protocol.recv(stream)
            except (EOFError, OSError, protocol.ProtocolError, ValueError):
                self._replies.put(None)
                return
            if self.lm_over_control and message.get("type") == "lm_request":
                threading.Thread(target=self._answer, args=(proc, message), daemon=True,
                                 name=f"rlm-{self.name}-lm").start()
            else:
                self._replies.put(message)

    def _answer(self, proc: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
        """Answer one ``lm_request`` of the guest with the host's ``call``."""
        assert self._call is not None
        try:
            reply = self._call(message.get("request") or {})
        except Exception as exc:  # a bug in the handler must not kill the channel
            reply = {"error": {"type": type(exc).__name__, "message": str(exc)}}
        with contextlib.suppress(OSError, ValueError, protocol.ProtocolError):
            self._send({"type": "lm_reply", "id": message.get("id"), "reply": reply}, proc)

    def _send(self, message: dict[str, Any], proc: subprocess.Popen[bytes] | None = None
              ) -> None:
        proc = proc or self._proc
        assert proc is not None and proc.stdin is not None
        with self._write_lock:
            protocol.send(protocol.FileStream(None, proc.stdin), message)

    def _expect(self, kind: str, timeout_s: float | None, *, starting: bool = False
                ) -> dict[str, Any]:
        try:
            reply = self._replies.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError from None
        if reply is None:  # the process ended, or broke the control channel
            code = None
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self._proc.wait(1) if self._proc is not None else None
            raise (EnvStartError if starting else ProcessLookupError)(
                f"{self.name}: the REPL process ended or broke the control channel "
                f"(exit code {code})")
        if reply.get("type") == "error":
            raise EnvError(f"{self.name}: {reply.get('message')}")
        if reply.get("type") != kind:
            raise EnvError(f"{self.name}: expected {kind!r}, got {reply.get('type')!r}")
        return reply

    def _roundtrip(self, message: dict[str, Any], timeout_s: float | None, *,
                   starting: bool = False) -> dict[str, Any]:
        expected = {"init": "ok", "tools": "ok", "set_var": "ok", "exec": "result",
                    "final_text": "value", "shutdown": "ok"}[message["type"]]
        try:
            self._send(message)
        except (OSError, ValueError) as exc:
            if starting:
                raise EnvStartError(f"{self.name}: the REPL process is gone: {exc}") from exc
            raise ProcessLookupError(str(exc)) from exc
        try:
            return self._expect(expected, timeout_s, starting=starting)
        except TimeoutError:
            if starting:
                self._kill()
                raise EnvStartError(f"{self.name}: the REPL process did not answer in "
                                    f"{timeout_s:g}s") from None
            raise

    # -- the REPL ----------------------------------------------------------------------------
    def set_variable(self, name: str, value: Any) -> None:
        if self.scratch is None:
            raise EnvError("start the environment first")
        path, fmt = self._write_value(name, value)
        self._variables[name] = (self.guest_path(path), fmt)
        with self._lock:
            self._roundtrip({"type": "set_var", "name": name, "file": self.guest_path(path),
                             "format": fmt}, self.start_timeout_s)

    def _write_value(self, name: str, value: Any) -> tuple[Path, str]:
        assert self.scratch is not None
        return write_value(self.scratch / ".rlm", name, value, owner=self.name)

    def execute(self, code: str, *, timeout_s: float | None = None) -> ExecResult:
        if self._proc is None:
            raise EnvError("start the environment first")
        limit = self.block_timeout_s if timeout_s is None else min(timeout_s, self.block_timeout_s)
        started = time.monotonic()
        with self._lock:
            try:
                reply = self._roundtrip({"type": "exec", "code": code}, limit)
            except TimeoutError:
                self._restart()
                return ExecResult(error=(
                    f"TimeoutError: the block ran past {limit:g}s and was stopped; the REPL "
                    "was restarted: `context` is back, your other variables are gone"),
                    elapsed_s=time.monotonic() - started)
            except ProcessLookupError as exc:
                self._restart()
                return ExecResult(error=(
                    f"ProcessDied: {exc} (out of memory or killed); the REPL was restarted: "
                    "`context` is back, your other variables are gone"),
                    elapsed_s=time.monotonic() - started)
        reply.pop("type", None)
        return ExecResult.from_dict(reply)

    def resolve_final_text(self, expression: str) -> str:
        with self._lock:
            return str(self._roundtrip({"type": "final_text", "expression": expression},
                                       self.block_timeout_s)["text"])

    def _restart(self) -> None:
        self._kill()
        self._spawn()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self.process_killed()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._proc is not None:
            with contextlib.suppress(Exception):
                self._roundtrip({"type": "shutdown"}, 2.0)
            self._kill()
        if self._server is not None:
            self._server.close()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


class SubprocessEnvironment(ProcessEnvironment):
    """A plain child Python process with rlimits and a wall-clock kill per block.

    Isolates: the host's memory and variables (API keys included: the child gets no host
    environment variable), a crash or ``os._exit`` of the REPL, runaway blocks.  Does NOT
    isolate: the file system, the network, other processes of the same user.  As root,
    the process-count and memory limits can be raised again by the code itself.
    """

    name = "subprocess"
    isolation = "separate process, rlimits, wall-clock kill; shares files and network"
