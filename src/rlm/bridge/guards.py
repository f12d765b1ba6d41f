"""Guards of the REPL runtime against code that would end or subvert its own process.

Model code sees a guarded ``os`` (no ``_exit``, ``abort``, or signal to this process or its
group) and ``signal`` (no signal raised at its own threads, no timer whose signal would end
it) through the ``__import__`` of ``guarded_builtins``; ``snapshot``/``reset`` undo in-place
changes to a helper function (its code, defaults, closure).  These are guards against
accidents and lazy tampering in the same process, not a security boundary: what isolates
is the environment around the process.  Standard library only; shipped next to
``guest.py``.
"""

from __future__ import annotations

import builtins
import os
import signal
import sys
import types
from typing import Any

__all__ = ["guarded_builtins", "reset", "snapshot"]


class _Guarded(types.ModuleType):
    """A module as model code sees it: the real one, but for the functions a subclass
    overrides (reads and writes of every other attribute go to the real module)."""

    def __init__(self, real: types.ModuleType) -> None:
        super().__init__(real.__name__, real.__doc__)
        self.__dict__["_real"] = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_real"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__dict__["_real"], name, value)


class _GuardedOS(_Guarded):
    """``os`` as model code sees it: ``_exit``, ``abort`` and signals to this process raise."""

    def _exit(self, code: int = 0) -> None:
        real = self.__dict__["_real"]
        if real.getpid() != _REPL_PID:  # a child forked by model code may end itself
            real._exit(code)
        raise SystemExit(f"os._exit({code}) is not allowed in the REPL")

    @staticmethod
    def abort() -> None:
        raise SystemExit("os.abort() is not allowed in the REPL")

    def kill(self, pid: int, sig: int) -> None:
        real = self.__dict__["_real"]
        if pid in (0, -1, real.getpid(), real.getppid()) or pid == -real.getpgrp():
            raise PermissionError("signalling the REPL's own process is not allowed")
        real.kill(pid, sig)

    def killpg(self, pgid: int, sig: int) -> None:
        real = self.__dict__["_real"]
        if pgid in (0, real.getpgrp()):
            raise PermissionError("signalling the REPL's own process group is not allowed")
        real.killpg(pgid, sig)


class _GuardedSignal(_Guarded):
    """``signal`` as model code sees it: no signal raised at this process's own threads, and
    no timer whose signal would end it (one with a Python handler installed is fine)."""

    @staticmethod
    def raise_signal(signalnum: int) -> None:
        raise PermissionError("signalling the REPL's own process is not allowed")

    def pthread_kill(self, thread_id: int, signalnum: int) -> None:
        real = self.__dict__["_real"]
        if signalnum != 0 and os.getpid() == _REPL_PID:
            raise PermissionError("signalling the REPL's own threads is not allowed")
        real.pthread_kill(thread_id, signalnum)

    def _timer_allowed(self, signalnum: int) -> None:
        real = self.__dict__["_real"]
        if not callable(real.getsignal(signalnum)):
            raise PermissionError(f"a timer whose signal ({real.Signals(signalnum).name}) would "
                                  "end the REPL is not allowed; install a handler first")

    def alarm(self, seconds: int) -> int:
        real = self.__dict__["_real"]
        if seconds:
            self._timer_allowed(real.SIGALRM)
        return real.alarm(seconds)

    def setitimer(self, which: int, seconds: float, interval: float = 0.0) -> Any:
        real = self.__dict__["_real"]
        if seconds or interval:
            self._timer_allowed({real.ITIMER_REAL: real.SIGALRM,
                                 real.ITIMER_VIRTUAL: real.SIGVTALRM}.get(which, real.SIGPROF))
        return real.setitimer(which, seconds, interval)


def snapshot(function: Any) -> tuple[Any, ...]:
    """What model code could change in place on a helper function: its code, defaults and
    the contents of its closure cells."""
    cells = tuple(cell.cell_contents for cell in function.__closure__ or ())
    return (function.__code__, function.__defaults__, function.__kwdefaults__, *cells)


def reset(function: Any, saved: tuple[Any, ...]) -> bool:
    """Undo in-place changes to ``function`` since ``saved = snapshot(function)``; return
    whether there were any."""
    now = snapshot(function)
    if len(now) == len(saved) and all(a is b for a, b in zip(now, saved, strict=True)) \
            and not function.__dict__:
        return False
    function.__code__, function.__defaults__, function.__kwdefaults__ = saved[:3]
    for cell, value in zip(function.__closure__ or (), saved[3:], strict=True):
        cell.cell_contents = value
    function.__dict__.clear()
    return True


_REPL_PID = os.getpid()
_GUARDED: dict[str, types.ModuleType] = {"os": _GuardedOS(os),
                                         "signal": _GuardedSignal(signal)}
if "posix" in sys.modules:
    _GUARDED["posix"] = _GuardedOS(sys.modules["posix"])
_real_import = builtins.__import__


def _guarded_import(name: str, globals: Any = None, locals: Any = None,
                    fromlist: Any = (), level: int = 0) -> Any:
    module = _real_import(name, globals, locals, fromlist, level)
    top = name.partition(".")[0]
    if level == 0 and top in _GUARDED and (not fromlist or name == top):
        return _GUARDED[top]
    return module


def guarded_builtins() -> dict[str, Any]:
    """A copy of the builtins whose ``__import__`` hands out the guarded ``os``/``signal``."""
    table = dict(vars(builtins))
    table["__import__"] = _guarded_import
    return table
