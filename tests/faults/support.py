"""Helpers of the fault-injection suite: bounded runs, complete traces, a scripted model
that says when a block has started, and the processes of a REPL to kill.

Every fault test checks three things (issue 12):

- the outcome is an ``RLMResult`` or an ``rlm.errors.RLMError`` whose ``partial`` is the
  result so far, never another exception (``bounded``);
- it comes within a bounded time (``bounded(..., limit_s=...)``: generous, not a benchmark);
- the trace written to a file is complete: every line parses, the root's ``run_start``
  comes first and its ``run_end`` last, every node that started ended, and the ending
  matches the outcome (``read_trace`` / ``check_trace``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rlm.environments.base import Environment
from rlm.errors import RLMError
from rlm.result import RLMResult
from tests.conftest import repl

__all__ = ["STARTED", "Ran", "Script", "after", "bounded", "check_trace", "code_execs",
           "process_alive", "read_trace", "repl", "repl_pid"]

#: The first line of a block that tells the test it is running: its ``llm_query`` reaches
#: ``Script``, which sets ``block_started`` (works in every environment, files or not).
STARTED = "llm_query('the block has started')\n"


@dataclass
class Ran:
    """What one bounded run gave: a result or an rlm error, and how long it took."""

    result: RLMResult | None
    error: RLMError | None
    elapsed_s: float
    #: When the run returned (``time.monotonic``), to compare with when a fault was injected.
    ended_at: float

    @property
    def outcome(self) -> RLMResult:
        """The result, or the error's partial result."""
        if self.result is not None:
            return self.result
        assert self.error is not None
        return self.error.partial


def bounded(call: Callable[[], RLMResult], limit_s: float) -> Ran:
    """Run ``call``; fail unless it returns an ``RLMResult`` or raises an ``RLMError``
    carrying its partial result, within ``limit_s`` seconds."""
    started = time.monotonic()
    result: RLMResult | None = None
    error: RLMError | None = None
    try:
        result = call()
    except RLMError as exc:
        error = exc
    except Exception as exc:  # the very thing this suite exists to catch
        pytest.fail(f"a raw {type(exc).__name__} escaped the run instead of an rlm error: "
                    f"{exc!r}")
    ended = time.monotonic()
    elapsed = ended - started
    assert elapsed < limit_s, f"the run took {elapsed:.1f}s, more than {limit_s:g}s"
    if result is not None:
        assert isinstance(result, RLMResult), result
    else:
        assert error is not None
        assert isinstance(error.partial, RLMResult), \
            f"{type(error).__name__} without a partial result: {error}"
        assert error.partial.stop_reason == "error"
        assert error.run_id is not None and error.partial.run_id == error.run_id
    return Ran(result, error, elapsed, ended)


def read_trace(path: Path, *, whole_lines: bool = True) -> list[dict[str, Any]]:
    """The events of a JSONL trace; every line must parse as one JSON object (and, with
    ``whole_lines``, the file must end with a line break: no event was cut short)."""
    text = Path(path).read_text(encoding="utf-8")
    assert text, f"the trace {path} is empty"
    if whole_lines:
        assert text.endswith("\n"), f"the last line of {path} is cut short: {text[-200:]!r}"
    events = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            event = json.loads(line)
        except ValueError as exc:
            raise AssertionError(f"line {number} of {path} is not JSON: {line[:200]!r}") from exc
        assert isinstance(event, dict) and {"type", "run_id", "seq", "data"} <= set(event), line
        events.append(event)
    seqs = [event["seq"] for event in events]
    assert seqs == sorted(set(seqs)), f"events out of order: {seqs}"
    return events


def check_trace(path: Path, ran: Ran | None = None) -> list[dict[str, Any]]:
    """Read a one-completion trace and check it is complete: the root's ``run_start``
    first, its ``run_end`` last, every node that started ended; with ``ran``, the ending
    matches it (the result's ``final`` event and stop reason, or the error's type)."""
    events = read_trace(path)
    roots = [e for e in events if e.get("parent_run_id") is None and e.get("depth") == 0]
    assert roots, "no event of the root node"
    assert events[0]["type"] == "run_start" and events[0] in roots, events[0]
    assert events[-1]["type"] == "run_end" and events[-1] in roots, events[-1]
    assert [e["type"] for e in roots].count("run_start") == 1
    assert [e["type"] for e in roots].count("run_end") == 1
    started = {e["run_id"] for e in events if e["type"] == "run_start"}
    ended = {e["run_id"] for e in events if e["type"] == "run_end"}
    assert started == ended, f"nodes that never ended: {started - ended}"
    if ran is not None:
        root_id = events[0]["run_id"]
        end = events[-1]["data"]
        if ran.result is not None:
            assert ran.result.run_id == root_id
            finals = [e for e in roots if e["type"] == "final"]
            assert len(finals) == 1 and finals[0]["data"]["stop_reason"] == \
                ran.result.stop_reason, finals
            assert "error" not in end, end
        else:
            assert ran.error is not None and ran.error.run_id == root_id
            assert end["error"]["type"] == type(ran.error).__name__, end
    return events


def code_execs(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``data`` of every ``code_exec`` event, in order."""
    return [e["data"] for e in events if e["type"] == "code_exec"]


class Script:
    """The root model's replies, in order, as a scripted backend's ``responses``.

    A sub-call (``llm_query`` from a block: ``STARTED``) is answered ``"ok"`` and sets
    ``block_started``; ``turns`` counts the root's turns.  Past the last reply the model
    keeps answering ``FINAL('script exhausted')``.
    """

    def __init__(self, *replies: str) -> None:
        self.replies = list(replies)
        self.turns = 0
        self.block_started = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, messages: list[dict[str, Any]], depth: int) -> str:
        if depth > 0:
            self.block_started.set()
            return "ok"
        with self._lock:
            self.turns += 1
            if self.turns <= len(self.replies):
                return self.replies[self.turns - 1]
        return repl("FINAL('script exhausted')")


class _After(threading.Thread):
    def __init__(self, when: threading.Event | Callable[[], bool], delay_s: float,
                 action: Callable[[], Any]) -> None:
        super().__init__(daemon=True, name="fault-trigger")
        self.when, self.delay_s, self.action = when, delay_s, action
        self.fired_at: float | None = None
        self.error: BaseException | None = None

    def _wait(self, timeout_s: float) -> bool:
        if isinstance(self.when, threading.Event):
            return self.when.wait(timeout_s)
        deadline = time.monotonic() + timeout_s
        while not self.when():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def run(self) -> None:
        if not self._wait(60):
            return
        time.sleep(self.delay_s)
        self.fired_at = time.monotonic()
        try:
            self.action()
        except BaseException as exc:  # reported by the test through ``check``
            self.error = exc

    def check(self) -> float:
        """The moment the action ran (it must have, without an error)."""
        self.join(timeout=10)
        if self.error is not None:
            raise AssertionError(f"the fault could not be injected: {self.error!r}")
        assert self.fired_at is not None, "the fault was never injected"
        return self.fired_at


def after(when: threading.Event | Callable[[], bool], action: Callable[[], Any],
          delay_s: float = 0.3) -> _After:
    """Run ``action`` in a thread ``delay_s`` seconds after ``when`` (an event is set, or a
    predicate, polled, is true); ``.check()`` returns when it ran (``time.monotonic``)."""
    trigger = _After(when, delay_s, action)
    trigger.start()
    return trigger


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def repl_pid(env: Environment) -> int:
    """The host pid that is the REPL of ``env``: the kernel of ``ipython``, the broker of
    ``remote-local``; for ``subprocess`` and ``sandbox`` the innermost process under the
    launcher (the runner's Python itself, inside bubblewrap for ``sandbox``); for
    ``gvisor``, ``docker`` and ``pyodide`` the launcher (``runsc``, the ``docker run``
    client, ``deno``), whose guest is not a host process of its own or is not its child."""
    name = env.name
    if name == "ipython":
        pid = env.kernel_pid  # type: ignore[attr-defined]
    elif name == "remote-local":
        pid = env.pid  # type: ignore[attr-defined]
    else:
        proc = env._proc  # type: ignore[attr-defined]
        pid = None if proc is None else proc.pid
    assert pid is not None, f"{name}: no REPL process is running"
    if name in ("subprocess", "sandbox"):
        while children := _children(pid):
            pid = children[0]
    return pid


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has ended
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
