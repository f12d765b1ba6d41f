"""Faults of the REPL, end to end through ``RLM`` in real environments: the REPL process
killed from outside during a block, a block that never ends, a block out of memory, a
block that fills the disk, and ``RLM.cancel()`` during a block.  The model is scripted;
the REPLs, processes, signals and limits are real.  Each run must end cleanly, in a
bounded time, with a complete trace, and where the REPL can recover, the model's next
reply must still answer."""

from __future__ import annotations

import inspect
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rlm import RLM, registry
from rlm.environments.base import Environment
from rlm.environments.process import ProcessEnvironment
from rlm.errors import EnvError
from tests.environments.conftest import require_available
from tests.faults.support import (
    STARTED,
    Script,
    after,
    bounded,
    check_trace,
    code_execs,
    process_alive,
    repl,
    repl_pid,
)

#: Environments whose REPL is a process that can be killed and is restarted after it.
RESTARTING = ["subprocess", "sandbox", "gvisor", "docker", "ipython", "pyodide"]
#: Those with rlimits (``memory_mb``, ``max_file_mb``).
LIMITED = ["subprocess", "sandbox", "gvisor", "docker", "ipython"]
#: Seconds a start (or restart) may take, for the time bounds: gVisor and Docker are slow.
START_S = {"gvisor": 4.0, "docker": 3.0, "pyodide": 2.0, "ipython": 2.0, "remote-local": 2.0}


@pytest.fixture
def make_env() -> Iterator[Callable[..., Environment]]:
    """``make_env(name, **options)``: an environment this test holds a handle on (skipped
    where the machine cannot run it), closed after the test."""
    made: list[Environment] = []

    def make(name: str, **options: Any) -> Environment:
        require_available(name)
        env = registry.create_environment(name, options)
        made.append(env)
        return env

    yield make
    for env in made:
        env.close()


def scripted_rlm(script: Script, env: Environment, trace: Path, **kwargs: Any) -> RLM:
    return RLM(backend="scripted", backend_kwargs={"responses": script}, environment=env,
               trace=trace, max_iterations=5, **kwargs)


def run(rlm: RLM, limit_s: float, prompt: str = "the context survives"):
    with rlm:
        return bounded(lambda: rlm.completion(prompt), limit_s=limit_s)


# -- the REPL process killed from outside -----------------------------------------------------
@pytest.mark.parametrize("name", RESTARTING)
def test_repl_killed_during_a_block_is_restarted_and_the_run_answers(name, make_env,
                                                                     tmp_path):
    env = make_env(name)
    script = Script(repl(STARTED + "import time\ntime.sleep(60)"), repl("FINAL(context)"))
    killed: list[int] = []

    def kill() -> None:
        killed.append(repl_pid(env))
        os.kill(killed[0], signal.SIGKILL)

    trigger = after(script.block_started, kill, delay_s=0.2)
    ran = run(scripted_rlm(script, env, tmp_path / "trace.jsonl"),
              limit_s=10 + 3 * START_S.get(name, 1.0))
    killed_at = trigger.check()
    assert ran.result is not None, ran.error
    assert (ran.result.stop_reason, ran.result.response) == ("final", "the context survives")
    assert ran.ended_at - killed_at < 5 + 2 * START_S.get(name, 1.0)
    assert not process_alive(killed[0])
    events = check_trace(tmp_path / "trace.jsonl", ran)
    first, second = code_execs(events)
    assert first["error"].startswith("ProcessDied"), first["error"]
    assert "restarted" in first["error"]
    assert second["final"]["text"] == "the context survives"


def test_remote_broker_killed_during_a_block_is_a_clean_env_error(make_env, tmp_path):
    """The ``remote-local`` broker is the sandbox itself: once killed there is nothing to
    restart, so the run ends with an ``EnvError`` carrying its partial result."""
    env = make_env("remote-local")
    script = Script(repl(STARTED + "import time\ntime.sleep(60)"), repl("FINAL(context)"))
    trigger = after(script.block_started, lambda: os.killpg(repl_pid(env), signal.SIGKILL),
                    delay_s=0.2)
    ran = run(scripted_rlm(script, env, tmp_path / "trace.jsonl"), limit_s=15)
    killed_at = trigger.check()
    assert isinstance(ran.error, EnvError), ran
    assert ran.ended_at - killed_at < 5
    check_trace(tmp_path / "trace.jsonl", ran)


# -- a block that never ends, under max_timeout --------------------------------------------
#: max_timeout per environment: room for a start, the stopped block (half the time left),
#: a restart and the answer.
HUNG_TIMEOUT_S = {"gvisor": 14.0, "docker": 9.0, "pyodide": 7.0, "ipython": 7.0,
                  "remote-local": 7.0}
HUNG = ["local", "subprocess", "sandbox", "gvisor", "docker", "ipython", "pyodide",
        "remote-local"]


@pytest.mark.slow
@pytest.mark.parametrize("name", HUNG)
def test_a_hung_block_is_stopped_at_a_share_of_the_time_left(name, make_env, tmp_path):
    """``while True: pass`` under ``max_timeout``: the engine gives the block half the time
    left (``EngineConfig.block_time_share``), so it is stopped with time to spare and the
    model's next reply answers before the deadline."""
    max_timeout = HUNG_TIMEOUT_S.get(name, 5.0)
    env = make_env(name)
    script = Script(repl("n = 0\nwhile True:\n    n += 1"), repl("FINAL('recovered')"))
    ran = run(scripted_rlm(script, env, tmp_path / "trace.jsonl", max_timeout=max_timeout),
              limit_s=max_timeout + 3)
    assert ran.result is not None, ran.error
    assert (ran.result.stop_reason, ran.result.response) == ("final", "recovered")
    events = check_trace(tmp_path / "trace.jsonl", ran)
    hung = code_execs(events)[0]
    assert hung["error"].startswith("TimeoutError"), hung["error"]
    # stopped at about half the time left, never after all of it
    # Half the time left, plus the kill and restart of the REPL (seconds for gvisor on a
    # busy machine), and in any case before the deadline the block alone would have used.
    bound = min(max_timeout * 0.5 + 5.0, max_timeout - 0.5)
    assert 0.9 < hung["elapsed_s"] < bound, hung["elapsed_s"]


# -- out of memory ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", LIMITED)
def test_a_block_out_of_memory_fails_and_the_run_goes_on(name, make_env, tmp_path):
    env = make_env(name, memory_mb=256)
    grow = "chunks = []\nwhile True:\n    chunks.append(bytearray(32 << 20))"
    script = Script(repl(grow), repl("FINAL('alive')"))
    ran = run(scripted_rlm(script, env, tmp_path / "trace.jsonl"),
              limit_s=15 + 2 * START_S.get(name, 1.0))
    assert ran.result is not None, ran.error
    assert (ran.result.stop_reason, ran.result.response) == ("final", "alive")
    events = check_trace(tmp_path / "trace.jsonl", ran)
    error = code_execs(events)[0]["error"]
    assert "MemoryError" in error or error.startswith("ProcessDied"), error


# -- the disk full ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", LIMITED)
def test_a_file_past_max_file_mb_fails_and_the_run_goes_on(name, make_env, tmp_path):
    env = make_env(name, max_file_mb=1)
    write = "with open('big.bin', 'wb') as f:\n    f.write(b'x' * (3 << 20))"
    script = Script(repl(write), repl("import os\nFINAL(os.path.getsize('big.bin'))"))
    ran = run(scripted_rlm(script, env, tmp_path / "trace.jsonl"),
              limit_s=10 + START_S.get(name, 1.0))
    assert ran.result is not None, ran.error
    assert ran.result.stop_reason == "final"
    assert int(ran.result.response) <= 1 << 20  # never past the limit
    events = check_trace(tmp_path / "trace.jsonl", ran)
    error = code_execs(events)[0]["error"]
    assert "File too large" in error, error


#: Where a block meets a full disk: the tmpfs ``/tmp`` of a container (``tmpfs_mb``),
#: else ``/dev/full`` (every write: ENOSPC).
FULL_DISK = {"gvisor": "/tmp/fill", "docker": "/tmp/fill"}


@pytest.mark.parametrize("name", ["local", "subprocess", "sandbox", "gvisor", "docker",
                                  "ipython"])
def test_a_full_disk_fails_the_block_and_the_run_goes_on(name, make_env, tmp_path):
    options = {"tmpfs_mb": 4, "max_file_mb": None} if name in FULL_DISK else {}
    env = make_env(name, **options)
    target = FULL_DISK.get(name, "/dev/full")
    fill = (f"with open({target!r}, 'wb') as f:\n    for _ in range(64):\n"
            "        f.write(b'x' * (1 << 20))\n        f.flush()")
    script = Script(repl(fill), repl("FINAL('alive')"))
    ran = run(scripted_rlm(script, env, tmp_path / "trace.jsonl"),
              limit_s=10 + START_S.get(name, 1.0))
    assert ran.result is not None, ran.error
    assert (ran.result.stop_reason, ran.result.response) == ("final", "alive")
    events = check_trace(tmp_path / "trace.jsonl", ran)
    error = code_execs(events)[0]["error"]
    assert "No space left on device" in error, error


@pytest.mark.parametrize("name", ["sandbox", "gvisor", "docker"])
def test_a_full_scratch_directory_fails_the_block_and_the_run_goes_on(name, make_env,
                                                                      tmp_path):
    """The scratch directory bounded by ``max_disk_mb`` (a tmpfs, as root) fills up: the
    write fails with ENOSPC, the REPL and the run go on."""
    if "max_disk_mb" not in inspect.signature(ProcessEnvironment.__init__).parameters:
        pytest.skip("no max_disk_mb option in this version")
    if os.geteuid() != 0:
        pytest.skip("the scratch quota needs root")
    env = make_env(name, max_disk_mb=4, max_file_mb=None)
    fill = ("for i in range(16):\n    with open(f'fill-{i}', 'wb') as f:\n"
            "        f.write(b'x' * (1 << 20))")
    script = Script(repl(fill), repl("import os\nFINAL(len(os.listdir('.')))"))
    ran = run(scripted_rlm(script, env, tmp_path / "trace.jsonl"),
              limit_s=10 + START_S.get(name, 1.0))
    assert ran.result is not None, ran.error
    assert ran.result.stop_reason == "final"
    assert int(ran.result.response) < 16
    events = check_trace(tmp_path / "trace.jsonl", ran)
    error = code_execs(events)[0]["error"]
    assert "No space left on device" in error, error


# -- cancel during a block ----------------------------------------------------------------------
CANCEL = ["local", "subprocess", "sandbox", "gvisor", "docker", "ipython", "pyodide",
          "remote-local"]
#: How long after ``cancel()`` the run may return: ``local`` cannot stop ``time.sleep`` (a
#: C call) and abandons the cell after its 2 s grace.
#: gVisor's cancel path crossed 3.0 s twice on a loaded 2-core machine (3.04 s, 3.1 s).
CANCEL_WITHIN_S = {"local": 3.5, "gvisor": 4.0}


@pytest.mark.parametrize("name", CANCEL)
def test_cancel_during_a_block_returns_cancelled_promptly(name, make_env, tmp_path):
    # remote-local: a short block limit, so that the expected failure costs seconds
    env = make_env(name, **({"block_timeout_s": 6.0} if name == "remote-local" else {}))
    script = Script(repl(STARTED + "import time\ntime.sleep(120)"), repl("FINAL('too late')"))
    rlm = scripted_rlm(script, env, tmp_path / "trace.jsonl")
    trigger = after(script.block_started, rlm.cancel, delay_s=0.3)
    ran = run(rlm, limit_s=15 + START_S.get(name, 1.0))
    cancelled_at = trigger.check()
    assert ran.result is not None, ran.error
    assert ran.result.stop_reason == "cancelled"
    assert ran.ended_at - cancelled_at < CANCEL_WITHIN_S.get(name, 3.0), \
        f"returned {ran.ended_at - cancelled_at:.1f}s after the cancel"
    assert script.turns == 1  # no turn after the cancel
    events = check_trace(tmp_path / "trace.jsonl", ran)
    (block,) = code_execs(events)
    assert block["error"].startswith("Cancelled: the call tree was stopped"), \
        block["error"]
