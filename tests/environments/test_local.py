"""The local environment beyond the shared suite: capture in the host process, scaffold
protection, the host's cwd and streams left alone."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from rlm.environments.local import LocalEnvironment


def no_host(message):
    return {"error": {"type": "EnvError", "message": "no host in this test"}}


@pytest.fixture
def env():
    environment = LocalEnvironment()
    environment.start(no_host)
    environment.set_variable("context", "the context")
    yield environment
    environment.close()


def test_variables_persist_and_last_expression_is_echoed(env):
    env.execute("x = 21")
    result = env.execute("x * 2")
    assert result.stdout.strip() == "42" and result.error is None


def test_errors_are_data_not_exceptions(env):
    result = env.execute("1 / 0")
    assert "ZeroDivisionError" in result.error and "line 1" in result.error
    assert "SyntaxError" in env.execute("def (:").error


def test_rebound_helpers_and_context_are_restored(env):
    result = env.execute("context = context.split()\nllm_query = None\nFINAL = print")
    assert sorted(n.split("`")[1] for n in result.notes) == ["FINAL", "context", "llm_query"]
    assert env.execute("print(context)").stdout == "the context\n"
    assert env.execute("FINAL('x')").final.text == "x"


def test_outputs_of_concurrent_cells_never_mix():
    envs = [LocalEnvironment() for _ in range(6)]
    results = {}

    def work(index):
        env = envs[index]
        env.start(no_host)
        results[index] = env.execute(
            f"import time\nfor i in range(50):\n    print('env{index}')\n    time.sleep(0.001)"
        )

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for index, result in results.items():
        assert result.stdout.split() == [f"env{index}"] * 50


def test_stderr_is_captured(env):
    result = env.execute("import sys\nprint('oops', file=sys.stderr)")
    assert (result.stdout, result.stderr) == ("", "oops\n")


def test_cells_leave_cwd_and_the_process_streams_alone(env, capsys):
    env.execute("print('warm up')")  # the first cell installs the capture proxy, once
    cwd, stdout, stderr = os.getcwd(), sys.stdout, sys.stderr
    result = env.execute("import sys\nprint('x')\nprint('y', file=sys.stderr)")
    assert (result.stdout, result.stderr) == ("x\n", "y\n")
    assert os.getcwd() == cwd and sys.stdout is stdout and sys.stderr is stderr
    print("host")  # outside a cell the host's writes reach its own stream, and only they do
    assert capsys.readouterr() == ("host\n", "")
