"""The ``ipython`` environment: the guest runtime inside a Jupyter kernel (ipykernel).

The kernel is started with ``jupyter_client`` in its own process and session, bound to
127.0.0.1, with a clean environment and its connection file in a private directory.  It
imports the runner shipped into its scratch directory (which takes ``guest`` from the
installed ``rlm.bridge`` when the kernel's Python has it, else the shipped ``guest.py``)
and builds one ``runner.ControlHandler``.  The host drives it with the control messages
of every REPL (``rlm.bridge.protocol``: ``init``, ``tools``, ``set_var``, ``exec``), each
a frame in a file of the private directory that the kernel reads and removes; the reply
comes back as JSON in the execute reply's ``user_expressions``.  LM requests go to an
``LMServer`` over TCP with a secret token, as in the process environments.  Values cross
by file, never as code literals.
"""

from __future__ import annotations

import asyncio
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

from rlm.bridge import protocol
from rlm.bridge.tcp import LMServer
from rlm.environments.base import Environment
from rlm.environments.files import ship_runner, write_file, write_value
from rlm.environments.layout import SAFE_ENV, ProcessLimits
from rlm.errors import EnvError, EnvStartError
from rlm.tools import Tool, shipped_tools
from rlm.types import ExecResult, HostCall

__all__ = ["IPythonEnvironment"]

_T = TypeVar("_T")
_MIME = "application/vnd.rlm.reply+json"
# Runs once in the kernel's own namespace (the model's namespace is the runtime's).
_BOOTSTRAP = f'''
class _RLMReply:
    """Carries a JSON value back to the host in the execute reply's user_expressions."""

    def __init__(self, value=None):
        self.value = value

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {{{_MIME!r}: self.value}}


def _rlm_start(ship):
    import sys
    sys.path.insert(0, ship)
    import runner
    runner.apply_limits()
    return runner.ControlHandler()


_rlm_reply = _RLMReply()
'''


class _SpecManager(KernelSpecManager):
    """Always the ipykernel of this interpreter, whatever kernels the machine has installed."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        argv = [sys.executable, "-I", "-m", "ipykernel_launcher", "-f", "{connection_file}",
                "--HistoryManager.enabled=False"]
        return KernelSpec(argv=argv, display_name="rlm", language="python",
                          interrupt_mode="signal")


class _KernelDied(Exception):
    """The kernel process ended."""


class _NoReply(Exception):
    """The kernel gave no reply within the time it had."""


class _Interrupted(Exception):
    """``interrupt()`` was called while a block ran."""


class _KernelFailed(Exception):
    """The wrapper code itself raised in the kernel (``ename: evalue``), or the kernel's
    ``ControlHandler`` answered with an ``error`` frame."""


class IPythonEnvironment(Environment):
    """A Jupyter kernel per REPL, driven by ``jupyter_client``.

    Isolates: the host's memory and variables (the kernel gets no host environment
    variable, so no API key), a crash or kill of the kernel (it is restarted and the
    host's variables such as ``context`` are loaded again; the model's are lost), runaway
    blocks: past ``block_timeout_s`` the kernel is interrupted (SIGINT) and the variables
    survive; a block that ignores the interrupt for ``interrupt_grace_s`` gets the kernel
    restarted.  rlimits as in ``SubprocessEnvironment`` (``memory_mb`` of address space,
    ``max_processes``, ``max_file_mb``, no core dumps); as root the process limit is not
    enforced and the code may raise the limits again.  Does NOT isolate: files, the
    network, other processes of the same user.  Tools are defined in the kernel from their
    code (see ``rlm.tools``).  Calls are serialised by a lock; make them from synchronous
    code or a worker thread, not from inside a running event loop.
    """

    name = "ipython"
    supports_persistence = True
    supports_timeout = True
    isolation = "separate process (Jupyter kernel), rlimits, same user; shares files and network"

    def __init__(self, *, block_timeout_s: float = 300.0, interrupt_grace_s: float = 5.0,
                 memory_mb: int | None = 4096, max_processes: int | None = 256,
                 max_file_mb: int | None = 1024, capture_limit: int = protocol.CAPTURE_LIMIT,
                 start_timeout_s: float = 60.0) -> None:
        self.block_timeout_s = block_timeout_s
        #: Applied by the kernel to itself, as the runner does (``RLM_LIMITS``).
        self.limits = ProcessLimits(memory_mb=memory_mb, max_processes=max_processes,
                                    max_file_mb=max_file_mb)
        self.interrupt_grace_s = interrupt_grace_s
        self.capture_limit = capture_limit
        self.start_timeout_s = start_timeout_s
        self.scratch: Path | None = None
        self._private: Path | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: LMServer | None = None
        self._km: AsyncKernelManager | None = None
        self._kc: AsyncKernelClient | None = None
        self._variables: dict[str, tuple[str, str]] = {}
        self._tool_sources: dict[str, str] = {}
        self._launches = 0
        self._frames = 0
        self._lock = threading.Lock()
        self._closed = False
        self._interrupted = threading.Event()

    @property
    def kernel_pid(self) -> int | None:
        """The pid of the running kernel process (``None`` when none runs)."""
        provisioner = None if self._km is None else self._km.provisioner
        return getattr(provisioner, "pid", None)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, call: HostCall, tools: Mapping[str, Tool] | None = None) -> None:
        with self._lock:
            if self._km is not None:
                return
            if self._closed:
                raise EnvError("the environment is closed")
            self._tool_sources = shipped_tools(tools, self.name)
            self.scratch = Path(tempfile.mkdtemp(prefix="rlm-ipython-"))
            self._private = Path(tempfile.mkdtemp(prefix="rlm-kernel-"))
            (self.scratch / "tmp").mkdir()
            ship_runner(self.scratch / ".rlm")
            self._loop = asyncio.new_event_loop()
            self._server = LMServer(call)
            self._server.start()
            try:
                self._launch()
            except BaseException:
                self._release()
                raise

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        assert self._loop is not None
        return self._loop.run_until_complete(coro)

    def _kernel_env(self) -> dict[str, str]:
        assert self.scratch is not None
        return {**SAFE_ENV, "HOME": str(self.scratch), "TMPDIR": str(self.scratch / "tmp"),
                "IPYTHONDIR": str(self.scratch / ".ipython"), "RLM_LIMITS": self.limits.env(),
                "PYDEVD_DISABLE_FILE_VALIDATION": "1"}

    def _launch(self) -> None:
        """Start a kernel, load the runtime into it and set the host's variables again."""
        assert self.scratch is not None and self._private is not None
        assert self._server is not None
        self._launches += 1
        connection_file = self._private / f"kernel-{self._launches}.json"
        km = AsyncKernelManager(kernel_name="rlm", kernel_spec_manager=_SpecManager(),
                                ip="127.0.0.1", transport="tcp",
                                connection_file=str(connection_file))
        log = self._private / "kernel.log"
        self._km = km  # from now on _stop_kernel() reaps whatever was started
        try:
            with log.open("ab") as sink:  # the kernel keeps its own copy of the descriptor
                self._run(km.start_kernel(env=self._kernel_env(), cwd=str(self.scratch),
                                          stdin=None, stdout=sink, stderr=sink))
        except Exception as exc:
            self._stop_kernel()
            raise EnvStartError(f"{self.name}: cannot start the kernel: {exc}") from exc
        self._kc = km.client()
        self._kc.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
        timeout = self.start_timeout_s
        try:
            self._run_code(f"{_BOOTSTRAP}\n_rlm = _rlm_start({str(self.scratch / '.rlm')!r})",
                           timeout)
            self._control(protocol.Init(self._server.address, self._server.token,
                                        self.capture_limit), timeout)
            if self._tool_sources:
                self._control(protocol.Tools(self._tool_sources), timeout)
            for name, (path, fmt) in self._variables.items():
                self._control(protocol.SetVar(name, fmt, path), timeout)
        except (_NoReply, _KernelDied, _KernelFailed) as exc:
            tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
            self._stop_kernel()
            why = str(exc) or "timed out"
            raise EnvStartError(f"{self.name}: the kernel did not start ({why}); its log ends "
                                f"with:\n{tail}") from exc

    def _stop_kernel(self) -> None:
        """Kill the kernel's whole process group and remove its connection file."""
        km, kc, self._km, self._kc = self._km, self._kc, None, None
        if kc is not None:
            kc.stop_channels()
        if km is not None:
            self._run(km.shutdown_kernel(now=True))

    def _restart(self) -> None:
        self._stop_kernel()
        self._launch()

    # -- talking to the kernel ----------------------------------------------------------------
    def _execute(self, code: str) -> str:
        """Start running ``code`` in the kernel; return the request's id."""
        assert self._kc is not None
        return self._kc.execute(code, silent=True, store_history=False, allow_stdin=False,
                                user_expressions={"reply": "_rlm_reply"})

    def _send(self, message: protocol.Control) -> str:
        """Hand ``message`` to the kernel's ``ControlHandler`` as a frame in a file of the
        private directory, outside the scratch directory model code works in (never as a
        code literal: it may hold the token or a tool's code)."""
        assert self._private is not None
        self._frames += 1
        path = self._private / f"frame-{self._frames}.json"
        write_file(path, protocol.to_json(message.to_dict()))
        return self._execute(f"_rlm_reply = _RLMReply(_rlm.handle_file({str(path)!r}))")

    @staticmethod
    def _reply(kind: str, raw: Any) -> dict[str, Any]:
        """The fields of the ``ControlHandler``'s reply (ASCII JSON: Jupyter's own packer
        cannot carry a lone surrogate), which must be of ``kind``; else ``_KernelFailed``."""
        try:
            return protocol.expect_reply(protocol.decode(str(raw).encode("utf-8")), kind)
        except (protocol.Refused, protocol.ProtocolError) as exc:
            raise _KernelFailed(str(exc)) from None

    async def _await(self, msg_id: str, timeout_s: float, *, interruptible: bool = False
                     ) -> Any:
        assert self._kc is not None and self._km is not None
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _NoReply
            if interruptible and self._interrupted.is_set():
                raise _Interrupted
            try:
                message = await self._kc.get_shell_msg(timeout=min(left, 0.2))
            except queue.Empty:
                provisioner = self._km.provisioner
                code = None if provisioner is None else await provisioner.poll()
                if code is not None:
                    raise _KernelDied(f"the kernel process ended (exit code {code})") from None
                continue
            if message["parent_header"].get("msg_id") != msg_id:
                continue  # the late reply of a block that timed out
            content = message["content"]
            if content.get("status") != "ok":
                raise _KernelFailed(f"{content.get('ename')}: {content.get('evalue')}")
            reply = content.get("user_expressions", {}).get("reply", {})
            if reply.get("status") != "ok":
                raise _KernelFailed(f"{reply.get('ename')}: {reply.get('evalue')}")
            return reply["data"][_MIME]

    def _run_code(self, code: str, timeout_s: float) -> Any:
        return self._run(self._await(self._execute(code), timeout_s))

    def _control(self, message: protocol.Control, timeout_s: float) -> dict[str, Any]:
        """Send one control message and return the fields of its reply."""
        return self._reply(message.reply, self._run(self._await(self._send(message), timeout_s)))

    # -- the REPL ----------------------------------------------------------------------------
    def set_variable(self, name: str, value: Any) -> None:
        if self.scratch is None or self._km is None:
            raise EnvError("start the environment first")
        path, fmt = write_value(self.scratch / ".rlm", name, value, owner=self.name)
        self._variables[name] = (str(path), fmt)
        with self._lock:
            try:
                self._control(protocol.SetVar(name, fmt, str(path)), self.start_timeout_s)
            except (_NoReply, _KernelDied, _KernelFailed) as exc:
                self._restart()  # loads every host variable, this one included
                if isinstance(exc, _KernelFailed):
                    raise EnvError(f"{self.name}: cannot set {name!r}: {exc}") from exc

    def execute(self, code: str, *, timeout_s: float | None = None) -> ExecResult:
        if self._km is None:
            raise EnvError("start the environment first")
        limit = self.block_timeout_s if timeout_s is None else min(timeout_s, self.block_timeout_s)
        started = time.monotonic()
        with self._lock:
            self._interrupted.clear()
            msg_id = self._send(protocol.Exec(code))
            try:
                reply = self._run(self._await(msg_id, limit, interruptible=True))
                return ExecResult.from_dict(self._reply(protocol.Exec.reply, reply))
            except _NoReply:
                return self._stop(msg_id, protocol.timed_out(limit), started)
            except _Interrupted:
                return self._stop(msg_id, protocol.CANCELLED, started)
            except _KernelDied as exc:
                self._restart()
                return ExecResult(error=protocol.process_died(str(exc)),
                                  elapsed_s=time.monotonic() - started)
            except _KernelFailed as exc:
                raise EnvError(f"{self.name}: the kernel failed to run the block: {exc}") from exc

    def _stop(self, msg_id: str, cause: str, started: float) -> ExecResult:
        """Interrupt the block of ``msg_id`` (stopped for ``cause``); restart the kernel
        when it does not stop within ``interrupt_grace_s``."""
        assert self._km is not None
        self._run(self._km.interrupt_kernel())
        try:
            reply = self._run(self._await(msg_id, self.interrupt_grace_s))
            value = self._reply(protocol.Exec.reply, reply)
        except _KernelFailed:  # interrupted outside the model's code: nothing to report
            value = {}
        except (_NoReply, _KernelDied):
            self._restart()
            return ExecResult(error=f"{cause} and it did not stop when interrupted; "
                                    f"{protocol.RESTARTED}", elapsed_s=time.monotonic() - started)
        value.update(elapsed_s=time.monotonic() - started, error=(
            f"{cause} and it was interrupted (KeyboardInterrupt); {protocol.KEPT}, the "
            "block's work may be partial"))
        return ExecResult.from_dict(value)

    def interrupt(self) -> None:
        """Stop the block under way: the kernel is interrupted (SIGINT), and restarted if
        it does not stop within ``interrupt_grace_s``."""
        self._interrupted.set()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._release()

    def _release(self) -> None:
        self._closed = True
        try:
            self._stop_kernel()
        finally:
            if self._server is not None:
                self._server.close()
            if self._loop is not None:
                self._loop.close()
            for folder in (self.scratch, self._private):
                if folder is not None:
                    shutil.rmtree(folder, ignore_errors=True)
