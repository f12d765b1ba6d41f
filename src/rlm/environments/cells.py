"""Stoppable blocks for an in-process REPL: each cell runs in a thread of the REPL's own.

A thread cannot be killed, but an exception can be raised in it: ``CellThread`` runs
every cell of one REPL in one long-lived worker thread and, when a block runs past its
time limit or is interrupted, raises ``BlockStopped`` there.  The exception lands at the
thread's next Python instruction, so a pure-Python loop stops at once; a block stuck in
one long C call (``time.sleep(3600)``, a blocking read) only stops when the call returns.
A worker that does not stop within ``grace_s`` is abandoned (it is a daemon thread) and
the next cell gets a new one; the REPL's variables are kept either way.
"""

from __future__ import annotations

import contextvars
import ctypes
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["BlockStopped", "CellOutcome", "CellThread"]


class BlockStopped(BaseException):
    """Raised inside a cell that ran past its time limit or was interrupted."""


class CellOutcome:
    """How one cell ended: ``value`` (what the cell function returned), or ``stopped``
    (why it was stopped: ``"timeout"`` or ``"interrupt"``) and whether its thread had to
    be ``abandoned``."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.stopped: str | None = None
        self.abandoned = False


class _Job:
    def __init__(self, function: Callable[[], Any]) -> None:
        self.function = function
        self.context = contextvars.copy_context()  # the caller's context, as if it ran it
        self.outcome = CellOutcome()

    def run(self) -> None:
        try:
            self.outcome.value = self.context.run(self.function)
        except BaseException as exc:
            self.outcome.error = exc
        finally:
            self.outcome.done.set()


def _raise_in(thread: threading.Thread) -> None:
    ident = thread.ident
    if ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident),
                                                   ctypes.py_object(BlockStopped))


def _serve(jobs: queue.Queue[_Job | None]) -> None:
    while True:
        try:
            job = jobs.get()
            if job is None:
                return
            job.run()
        except BlockStopped:  # landed after its cell had ended: nothing to stop
            continue


class CellThread:
    """Runs cells one at a time in a worker thread; ``run`` returns a ``CellOutcome``."""

    def __init__(self, *, grace_s: float = 2.0, name: str = "rlm-local-cell") -> None:
        self.grace_s = grace_s
        self.name = name
        self._jobs: queue.Queue[_Job | None] | None = None
        self._thread: threading.Thread | None = None
        self._interrupted = threading.Event()

    def interrupt(self) -> None:
        """Stop the cell under way (thread-safe)."""
        self._interrupted.set()

    def run(self, function: Callable[[], Any], timeout_s: float | None) -> CellOutcome:
        if self._thread is None or not self._thread.is_alive():
            self._jobs = queue.Queue()
            self._thread = threading.Thread(target=_serve, args=(self._jobs,), daemon=True,
                                            name=self.name)
            self._thread.start()
        assert self._jobs is not None
        self._interrupted.clear()
        job = _Job(function)
        self._jobs.put(job)
        outcome = job.outcome
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not outcome.done.wait(0.05):
            if self._interrupted.is_set():
                outcome.stopped = "interrupt"
            elif deadline is not None and time.monotonic() >= deadline:
                outcome.stopped = "timeout"
            else:
                continue
            grace = time.monotonic() + self.grace_s
            while True:  # again and again: model code may catch it
                _raise_in(self._thread)
                if outcome.done.wait(0.1):
                    break
                if time.monotonic() >= grace:
                    outcome.abandoned = True  # stuck in C: the next cell gets a new thread
                    self._jobs.put(None)
                    self._thread = None
                    break
            break
        return outcome

    def close(self) -> None:
        if self._jobs is not None:
            self._jobs.put(None)
        self._thread = None
