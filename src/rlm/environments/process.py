"""REPLs in a separate process: the runner driven over pipes, LM calls over a socket.

``ProcessEnvironment`` holds everything the process-based environments share (its private
directories, shipping the runner, the control channel, per-block wall-clock kill and
restart, the ``LMServer``); subclasses only say how the process is launched (a plain child
in ``subprocess_env``, bubblewrap in ``sandbox``, gVisor, Docker, Pyodide).  Files go
through ``rlm.environments.files``.

Each environment owns one private directory (mode 0711) holding two others:

- ``control/``: what the host hands to the REPL (the runner's files, the values of
  ``set_variable``, the LM socket, a sandbox's seccomp program).  It belongs to the host;
  the REPL may read it (through a read-only mount where it has a root of its own) and
  never write it, so every file the host writes or opens is in a place the guest cannot
  replace with a link or a FIFO.
- ``work/`` (``scratch``): the REPL's working directory and home, the only place it may
  write.  The host makes it once, before the REPL first runs, and never touches what is
  inside again (no chown on restart, no reads) apart from removing it at ``close``.
"""

from __future__ import annotations

import contextlib
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
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

from rlm.bridge import protocol
from rlm.bridge.tcp import LMServer
from rlm.environments.base import Environment
from rlm.environments.files import make_dir, ship_runner, write_value
from rlm.environments.layout import SAFE_ENV, ProcessLimits
from rlm.errors import EnvError, EnvStartError
from rlm.tools import Tool, shipped_tools
from rlm.types import ExecResult, HostCall

__all__ = ["ProcessEnvironment"]


#: Put in a reply queue to wake the thread waiting on it (see ``interrupt``).
_WAKE: dict[str, Any] = {"type": "wake"}


class _Interrupted(Exception):
    """The wait for a reply was cut short by ``interrupt``."""


class _ReplGone(Exception):
    """The REPL process ended, or broke the control channel (the text says how)."""


class _NoReply(Exception):
    """The REPL process gave no reply within the time it had."""


class ProcessEnvironment(Environment):
    """A runner process per REPL.

    - ``block_timeout_s``: wall-clock limit of one block; past it the process is killed and
      restarted (variables set by the host are loaded again; the model's are lost) and the
      model is told so in the block's error.
    - ``interrupt()`` (the call tree stopped) sends SIGINT and, past ``interrupt_grace_s``,
      kills the process.
    - ``memory_mb``, ``cpu_s``, ``max_processes``, ``max_file_mb``: rlimits of the process
      (``limits``, a ``ProcessLimits``).
    - ``max_disk_mb``: where the guest may write only its scratch directory
      (``scratch_quota``) and the host runs as root, that directory is a tmpfs of this
      size (``None``: no limit).
    - The process gets a fresh scratch directory as its working directory and home, and an
      environment with no variable of the host (no API key can leak in).  What the host
      hands over lives in a separate ``control`` directory the process cannot write (see
      the module docstring).
    """

    supports_persistence = True
    supports_timeout = True
    use_unix_socket = False
    #: LM requests travel on the control channel (``lm_request``/``lm_reply`` frames, see
    #: ``rlm.bridge.runner``) instead of a socket: for guests with no network at all.
    lm_over_control = False
    #: Where the process sees the scratch directory; ``None``: at its host path.
    guest_root: str | None = None
    #: Where the process sees the control directory, mounted read-only; ``None``: at its
    #: host path.
    guest_control: str | None = None
    #: Whether the scratch directory is the only place the guest may write, so that a
    #: size-bounded tmpfs there (``max_disk_mb``, as root) bounds its disk use.
    scratch_quota = False

    def __init__(self, *, block_timeout_s: float = 300.0, memory_mb: int | None = 4096,
                 cpu_s: int | None = None, max_processes: int | None = 256,
                 max_file_mb: int | None = 1024, capture_limit: int = protocol.CAPTURE_LIMIT,
                 start_timeout_s: float = 60.0, interrupt_grace_s: float = 1.0,
                 max_disk_mb: int | None = 1024) -> None:
        self.block_timeout_s = block_timeout_s
        self.interrupt_grace_s = interrupt_grace_s
        self.max_disk_mb = max_disk_mb
        self._quota_mounted = False
        self.limits = ProcessLimits(memory_mb, cpu_s, max_processes, max_file_mb)
        self.capture_limit = capture_limit
        self.start_timeout_s = start_timeout_s
        #: The environment's private directory, its ``control`` and ``work`` (scratch) dirs.
        self.home: Path | None = None
        self.control: Path | None = None
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
        self._interrupted = threading.Event()

    # -- hooks for subclasses (and ``probe``, see ``Environment``) ----------------------------
    def launch_command(self, runner: Path) -> list[str]:
        """The command that starts ``runner`` (a host path inside the control directory)."""
        return [sys.executable, "-I", "-u", str(runner)]

    def guest_ids(self) -> tuple[int, int] | None:
        """The (uid, gid) the process runs as when the host runs as root, if it is not
        root; ``None``: the host's own.  The scratch directory is made theirs."""
        return None

    def prepare(self) -> None:
        """Called once after the directories are made, before the first process starts:
        write what the launch needs into ``control`` (a seccomp program...)."""

    def guest_path(self, host_path: Path) -> str:
        """How the process sees a file of the scratch or control directory: the same path,
        or its path under ``guest_root`` / ``guest_control`` where they are mounted."""
        path = Path(host_path)
        for host_dir, guest_dir in ((self.scratch, self.guest_root),
                                    (self.control, self.guest_control)):
            if guest_dir is not None and host_dir is not None and path.is_relative_to(host_dir):
                return str(PurePosixPath(guest_dir) / path.relative_to(host_dir))
        return str(path)

    def guest_lm_address(self, server: LMServer) -> Any:
        """The LM server's address as the process sees it (a Unix socket in the control
        directory when the process has a root of its own)."""
        if isinstance(server.address, tuple):
            return server.address
        return self.guest_path(Path(server.address))

    def process_killed(self) -> None:
        """Called after the process was killed: remove what it started outside its process
        group (a container...)."""

    def process_env(self) -> dict[str, str]:
        assert self.scratch is not None
        return {**SAFE_ENV, "HOME": self.guest_path(self.scratch),
                "TMPDIR": self.guest_path(self.scratch / "tmp"),
                "RLM_LIMITS": self.limits.env()}

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, call: HostCall, tools: Mapping[str, Tool] | None = None) -> None:
        if self._proc is not None:
            return
        if self._closed:
            raise EnvError("the environment is closed")
        self.check_available()
        self._tool_sources = shipped_tools(tools, self.name)
        self._make_dirs()
        assert self.control is not None
        self.prepare()
        self._call = call
        if not self.lm_over_control:
            unix = self.control / "lm.sock" if self.use_unix_socket else None
            self._server = LMServer(call, unix_path=unix)
            self._server.start()
        self._spawn()

    def _make_dirs(self) -> None:
        """The private directory with ``control`` (the host's, readable by the guest's
        group) and ``work`` (the guest's, and root's group so that a sandbox launcher with
        no capability may enter it), made before any guest code runs."""
        ids = self.guest_ids() if os.geteuid() == 0 else None
        self.home = Path(tempfile.mkdtemp(prefix="rlm-env-"))
        os.chmod(self.home, 0o711)
        control_group = os.getegid() if ids is None else ids[1]
        self.control = make_dir(self.home / "control", 0o750, (os.geteuid(), control_group))
        ship_runner(self.control)
        self.scratch = make_dir(self.home / "work", 0o770 if ids else 0o700,
                                None if ids is None else (ids[0], 0))
        if self.scratch_quota and self.max_disk_mb is not None and os.geteuid() == 0:
            self._mount_quota(ids)
        make_dir(self.scratch / "tmp", 0o700, ids)

    def _mount_quota(self, ids: tuple[int, int] | None) -> None:
        """Make the scratch directory a tmpfs of ``max_disk_mb``: the guest may write only
        there, so this bounds all it can write (its pages count against its memory cgroup
        where it has one)."""
        assert self.scratch is not None
        uid = os.geteuid() if ids is None else ids[0]
        options = (f"size={self.max_disk_mb}m,mode=0770,uid={uid},gid=0,nosuid,nodev")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "rlm-scratch",
                               str(self.scratch)], capture_output=True, text=True,
                              timeout=30, check=False)
        if done.returncode != 0:
            raise EnvStartError(f"{self.name}: cannot bound the scratch directory to "
                                f"{self.max_disk_mb} MB ({done.stderr.strip()}); pass "
                                "max_disk_mb=None to run without a disk limit")
        self._quota_mounted = True

    def _spawn(self) -> None:
        assert self.scratch is not None
        self._replies = queue.Queue()
        try:
            assert self.control is not None
            self._proc = subprocess.Popen(
                self.launch_command(self.control / "runner.py"),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                cwd=self.scratch, env=self.process_env(), start_new_session=True,
            )
        except OSError as exc:
            raise EnvStartError(f"{self.name}: cannot start the REPL process: {exc}") from exc
        proc = self._proc
        threading.Thread(target=self._read_replies, args=(proc, self._replies), daemon=True,
                         name=f"rlm-{self.name}-reader").start()
        try:
            self._handshake()
        except (_ReplGone, _NoReply) as exc:
            self._kill()
            raise EnvStartError(f"{self.name}: {exc}") from None

    def _handshake(self) -> None:
        """Wait for ``ready``; send ``init``, the tools and every variable set so far."""
        timeout, server = self.start_timeout_s, self._server
        self._expect(protocol.Ready.type, timeout)
        self._roundtrip(protocol.Init(
            lm_address=None if server is None else self.guest_lm_address(server),
            token="" if server is None else server.token, capture_limit=self.capture_limit,
        ), timeout)
        if self._tool_sources:
            try:
                self._roundtrip(protocol.Tools(self._tool_sources), timeout)
            except EnvError as exc:  # a tool's code failed in the guest
                self._kill()
                raise EnvStartError(str(exc)) from None
        for name, (path, fmt) in self._variables.items():
            self._roundtrip(protocol.SetVar(name, fmt, path), timeout)

    def _read_replies(self, proc: subprocess.Popen[bytes],
                      replies: queue.Queue[dict[str, Any] | None]) -> None:
        """Hand the frames of ``proc`` to ``replies`` (that process's own queue, so a late
        frame of a killed process never reaches its successor); ``None`` at the end."""
        assert proc.stdout is not None
        stream = protocol.FileStream(proc.stdout, None)
        while True:
            try:
                message = protocol.recv(stream)
            except Exception:  # a closed, broken or hostile channel: the process is done for
                replies.put(None)
                with contextlib.suppress(OSError):
                    proc.stdout.close()
                return
            if self.lm_over_control and message.get("type") == protocol.LMRequest.type:
                threading.Thread(target=self._answer, args=(proc, message), daemon=True,
                                 name=f"rlm-{self.name}-lm").start()
            else:
                replies.put(message)

    def _answer(self, proc: subprocess.Popen[bytes], frame: dict[str, Any]) -> None:
        """Answer one ``lm_request`` of the guest with the host's ``call``."""
        assert self._call is not None
        try:
            reply = self._call(protocol.LMRequest.from_dict(frame).request)
        except Exception as exc:  # a malformed request or a bug in the handler: not the end
            reply = protocol.error_reply(exc)
        with contextlib.suppress(OSError, ValueError, protocol.ProtocolError):
            self._send(protocol.LMReply(frame.get("id"), reply).to_dict(), proc)

    def _send(self, message: dict[str, Any], proc: subprocess.Popen[bytes] | None = None
              ) -> None:
        proc = proc or self._proc
        assert proc is not None and proc.stdin is not None
        with self._write_lock:
            protocol.send(protocol.FileStream(None, proc.stdin), message)

    def _expect(self, kind: str, timeout_s: float | None, *,
                interruptible: bool = False) -> dict[str, Any]:
        """The fields of the next reply, which must be of ``kind``: ``_NoReply`` past
        ``timeout_s``, ``_ReplGone``, ``_Interrupted`` (if ``interruptible``), or
        ``EnvError`` for an ``error`` frame or another type (the channel is not in step)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                reply = self._replies.get(timeout=left)
            except queue.Empty:
                raise _NoReply(f"the REPL process did not answer in {timeout_s:g}s") from None
            if reply is not _WAKE:
                break
            if interruptible and self._interrupted.is_set():
                raise _Interrupted
        if reply is None:  # the process ended, or broke the control channel
            code = None
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self._proc.wait(1) if self._proc is not None else None
            raise _ReplGone(f"the REPL process ended or broke the control channel "
                            f"(exit code {code})")
        try:
            return protocol.expect_reply(reply, kind)
        except (protocol.Refused, protocol.ProtocolError) as exc:
            raise EnvError(f"{self.name}: {exc}") from None

    def _roundtrip(self, message: protocol.Control, timeout_s: float | None, *,
                   interruptible: bool = False) -> dict[str, Any]:
        """Send ``message`` and return the fields of its reply (see ``_expect``)."""
        try:
            self._send(message.to_dict())
        except (OSError, ValueError) as exc:
            raise _ReplGone(f"the REPL process is gone: {exc}") from exc
        return self._expect(message.reply, timeout_s, interruptible=interruptible)

    # -- the REPL ----------------------------------------------------------------------------
    def set_variable(self, name: str, value: Any) -> None:
        if self.scratch is None:
            raise EnvError("start the environment first")
        path, fmt = self._write_value(name, value)
        self._variables[name] = (self.guest_path(path), fmt)
        with self._lock:
            if self._proc is None:  # killed by an interrupt: the new REPL loads every variable
                self._revive()
                return
            try:
                self._roundtrip(protocol.SetVar(name, fmt, self.guest_path(path)),
                                self.start_timeout_s)
            except (_ReplGone, _NoReply) as exc:  # the next block finds it dead and restarts
                raise EnvError(f"{self.name}: cannot set {name!r}: {exc}") from None

    def _write_value(self, name: str, value: Any) -> tuple[Path, str]:
        assert self.control is not None
        return write_value(self.control, name, value, owner=self.name)

    def interrupt(self) -> None:
        """Stop the block under way: SIGINT to the REPL's process group, then, past
        ``interrupt_grace_s``, kill it (a new REPL starts when the environment is next
        used)."""
        self._interrupted.set()
        self._replies.put(_WAKE)

    def _revive(self) -> None:
        """Start a new REPL process if the last one was killed by ``interrupt``."""
        if self._proc is None and self.scratch is not None and not self._closed:
            self._spawn()

    def _stop_block(self, started: float) -> ExecResult:
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGINT)
            try:
                result = ExecResult.from_dict(self._expect(protocol.Exec.reply,
                                                           self.interrupt_grace_s))
            except (_NoReply, _ReplGone, EnvError, ValueError):
                self._kill()  # the next use starts a new REPL
                result = ExecResult()
        else:
            result = ExecResult()
        return replace(result, elapsed_s=time.monotonic() - started, error=(
            protocol.CANCELLED + (f"\n{result.error}" if result.error else "")))

    def execute(self, code: str, *, timeout_s: float | None = None) -> ExecResult:
        if self._closed:
            raise EnvError("the environment is closed")
        if self.scratch is None:
            raise EnvError("start the environment first")
        limit = self.block_timeout_s if timeout_s is None else min(timeout_s, self.block_timeout_s)
        started = time.monotonic()
        with self._lock:
            self._revive()
            self._interrupted.clear()
            try:
                return ExecResult.from_dict(
                    self._roundtrip(protocol.Exec(code), limit, interruptible=True))
            except _Interrupted:
                return self._stop_block(started)
            except _NoReply:
                error = f"{protocol.timed_out(limit)} and was stopped; {protocol.RESTARTED}"
            except _ReplGone as exc:
                error = protocol.process_died(f"{self.name}: {exc}")
            except (EnvError, ValueError) as exc:  # out of step or malformed: not to be trusted
                error = protocol.channel_broke(str(exc))
            self._restart()
        return ExecResult(error=error, elapsed_s=time.monotonic() - started)

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
        self.process_killed()
        # The reader thread closes stdout when it sees the end of the stream: closing it
        # here would wait on that thread, forever if a daemon of the REPL holds the pipe.
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    def close(self) -> None:
        """Stop the process and remove everything; each step runs even when an earlier one
        was cut short (a second Ctrl-C), since a closed environment is not closed again."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._proc is not None:
                try:
                    with contextlib.suppress(EnvError, _ReplGone, _NoReply):
                        self._roundtrip(protocol.Shutdown(), 2.0)
                finally:
                    self._kill()
        finally:
            try:
                if self._server is not None:
                    self._server.close()
            finally:
                self._remove_dirs()

    def _remove_dirs(self) -> None:
        try:
            if self._quota_mounted and self.scratch is not None:
                subprocess.run(["umount", "--lazy", str(self.scratch)], capture_output=True,
                               timeout=30, check=False)
                self._quota_mounted = False
        finally:
            if self.home is not None:
                shutil.rmtree(self.home, ignore_errors=True)
