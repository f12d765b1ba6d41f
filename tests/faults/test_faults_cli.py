"""Ctrl-C against ``rlm run`` (a real process, real signals): the first SIGINT cancels the
run (exit 130, the partial answer, a complete trace), a second one right after aborts it;
both end the process within seconds, with a trace file whose every line is a whole JSON
event and no REPL process left behind.  The model is the fake OpenAI-compatible server on
127.0.0.1 (``-b openai --base-url``); its first reply is a block that sleeps."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.environments.conftest import require_available
from tests.fakes.openai_server import FakeOpenAIServer
from tests.faults.support import (
    STARTED,
    _children,
    process_alive,
    read_trace,
    repl,
)

pytestmark = pytest.mark.slow

#: From SIGINT to the process's exit.
EXIT_WITHIN_S = 6.0


def rlm_command() -> list[str]:
    script = Path(sys.executable).with_name("rlm")
    return [str(script)] if script.exists() else [sys.executable, "-m", "rlm.cli"]


class SleepyModel:
    """The fake server's replies: the root's first turn is a block that says it started
    (``llm_query``) and sleeps; every later turn answers."""

    def __init__(self) -> None:
        self.block_started = threading.Event()
        self.turns = 0

    def __call__(self, body: dict[str, Any]) -> str:
        if body["messages"][0]["role"] != "system":  # the block's llm_query
            self.block_started.set()
            return "ok"
        self.turns += 1
        return repl(STARTED + "import time\ntime.sleep(120)") if self.turns == 1 \
            else repl("FINAL('too late')")


@pytest.fixture
def sleepy() -> Iterator[tuple[FakeOpenAIServer, SleepyModel]]:
    model = SleepyModel()
    with FakeOpenAIServer(reply=model) as fake:
        yield fake, model


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def start(fake: FakeOpenAIServer, env: str, trace: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*rlm_command(), "run", "the question", "-b", "openai", "-m", "fake", "--base-url",
         fake.url, "-e", env, "--trace", str(trace), "--max-iterations", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))


@dataclass
class Pressed:
    """How ``rlm run`` ended after Ctrl-C."""

    returncode: int
    stdout: str
    stderr: str
    took_s: float  # from the first press to the exit
    repl_pids: list[int]  # the REPL's processes while the block ran
    repl_home: Path | None  # the private directory of a subprocess REPL (its cwd's parent)


def press_ctrl_c(fake: FakeOpenAIServer, model: SleepyModel, env: str, trace: Path,
                 presses: int) -> Pressed:
    """Start ``rlm run``, wait for the block to sleep, press Ctrl-C ``presses`` times
    (50 ms apart) and wait for the exit."""
    model.block_started.clear()
    model.turns = 0
    proc = start(fake, env, trace)
    try:
        assert model.block_started.wait(60), "the block never started"
        time.sleep(0.3)  # into the sleep
        pids = descendants(proc.pid)
        home = None
        if env != "local":
            assert pids, "no REPL process under rlm"
            runners = [pid for pid in pids if "runner.py" in _cmdline(pid)]
            home = Path(os.readlink(f"/proc/{runners[-1]}/cwd")).parent
            assert home.name.startswith("rlm-env-"), home
        pressed = time.monotonic()
        for press in range(presses):
            if press:
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        return Pressed(proc.returncode, out, err, time.monotonic() - pressed, pids, home)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def assert_no_repl_left(pids: list[int]) -> None:
    deadline = time.monotonic() + 5
    while (alive := [pid for pid in pids if process_alive(pid)]) and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, f"REPL processes left running after rlm exited: {alive}"


def remove_leftovers(home: Path | None) -> None:
    """Remove what an aborted run left of its REPL, should a test fail."""
    if home is not None and home.exists():
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("env", ["local", "subprocess"])
def test_first_ctrl_c_cancels_with_a_complete_trace(env, sleepy, tmp_path):
    require_available(env)
    fake, model = sleepy
    trace = tmp_path / "trace.jsonl"
    ran = press_ctrl_c(fake, model, env, trace, presses=1)
    assert ran.took_s < EXIT_WITHIN_S, f"rlm exited {ran.took_s:.1f}s after Ctrl-C"
    assert ran.returncode == 130, ran.stderr  # Cancelled.exit_code
    assert ran.stdout == "\n"  # the partial answer: empty, the block never finished
    assert "cancelling" in ran.stderr and "Traceback" not in ran.stderr, ran.stderr
    assert "stopped early (cancelled)" in ran.stderr, ran.stderr
    assert model.turns == 1
    events = read_trace(trace)
    root = [e for e in events if e["parent_run_id"] is None]
    assert root[0]["type"] == "run_start" and events[0] == root[0]
    assert events[-1] == root[-1] and root[-1]["type"] == "run_end"
    assert "error" not in root[-1]["data"]
    (final,) = [e for e in root if e["type"] == "final"]
    assert final["data"]["stop_reason"] == "cancelled"
    assert_no_repl_left(ran.repl_pids)
    assert ran.repl_home is None or not ran.repl_home.exists()  # the REPL was closed


@pytest.mark.parametrize("env", ["local", "subprocess"])
def test_second_ctrl_c_aborts_promptly_with_a_valid_trace(env, sleepy, tmp_path):
    require_available(env)
    fake, model = sleepy
    trace = tmp_path / "trace.jsonl"
    ran = press_ctrl_c(fake, model, env, trace, presses=2)
    try:
        assert ran.took_s < EXIT_WITHIN_S, f"rlm exited {ran.took_s:.1f}s after Ctrl-C"
        assert ran.returncode == 130, ran.stderr
        assert "Traceback" not in ran.stderr, ran.stderr
        events = read_trace(trace)  # every line a whole JSON event
        assert events[0]["type"] == "run_start" and events[0]["parent_run_id"] is None
        assert_no_repl_left(ran.repl_pids)
    finally:
        remove_leftovers(ran.repl_home)


def test_second_ctrl_c_still_removes_the_repl_files(sleepy, tmp_path):
    """The second Ctrl-C aborts, but what the REPL had on disk must still go: the
    ``subprocess`` REPL's private directory is removed.  Tried three times, as the second
    press must land while the run winds down (it does, most times)."""
    require_available("subprocess")
    fake, model = sleepy
    for attempt in range(3):
        ran = press_ctrl_c(fake, model, "subprocess", tmp_path / f"trace-{attempt}.jsonl",
                           presses=2)
        try:
            assert ran.returncode == 130
            assert ran.repl_home is not None
            assert not ran.repl_home.exists(), \
                f"attempt {attempt + 1}: the REPL's directory {ran.repl_home} was left behind"
        finally:
            remove_leftovers(ran.repl_home)
