"""The local environment: capture, scaffold protection, exit guards."""

from __future__ import annotations

import os
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


@pytest.mark.parametrize("code", [
    "import sys; sys.exit(3)",
    "exit()",
    "raise KeyboardInterrupt",
    "raise SystemExit",
    "import os; os._exit(1)",
    "from os import _exit; _exit(1)",
    "import os; os.abort()",
    "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
    "import os, signal; os.kill(0, signal.SIGTERM)",
    "import posix; posix._exit(1)",
])
def test_exit_attempts_never_end_the_host(env, code):
    result = env.execute(code)
    assert result.error is not None
    assert env.execute("print('alive')").stdout == "alive\n"


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


def test_huge_output_keeps_head_and_tail():
    env = LocalEnvironment(capture_limit=1000)
    env.start(no_host)
    result = env.execute("print('A' * 10_000 + 'END')")
    assert result.stdout.startswith("A" * 100) and result.stdout.rstrip().endswith("END")
    assert "characters dropped" in result.stdout and len(result.stdout) < 2000


def test_show_vars_lists_user_variables(env):
    env.execute("items = [1, 2, 3]\nname = 'x'\nimport json")
    shown = env.execute("SHOW_VARS()").stdout
    assert "items: list, len=3" in shown and "name: str" in shown
    assert "json" not in shown and "llm_query" not in shown


def test_cwd_and_process_streams_are_untouched(env):
    import sys

    before = (os.getcwd(), type(sys.stdout).__name__)
    env.execute("print('x')")
    assert os.getcwd() == before[0]


def test_close_is_idempotent():
    env = LocalEnvironment()
    env.start(no_host)
    env.close()
    env.close()
