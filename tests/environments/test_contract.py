"""The behaviour every environment shares.  No test here names an implementation."""

from __future__ import annotations

import threading
import time

import pytest

from rlm import RLM, registry
from rlm.errors import EnvStartError
from rlm.tools import make_tools
from tests.conftest import repl
from tests.environments.conftest import TIMEOUT_ENVIRONMENTS


def host(message):
    if message.get("op") == "llm_query":
        return {"text": f"echo:{message['prompt']}"}
    if message.get("op") == "budget":
        return {"remaining": {"iterations_left": 3}}
    return {"error": {"type": "BridgeProtocolError", "message": "unsupported in this test"}}


@pytest.fixture
def env(env_factory):
    environment = env_factory()
    environment.start(host)
    environment.set_variable("context", 'a context ending in "')
    return environment


def test_variables_persist_and_context_is_visible(env):
    assert env.execute("n = len(context)").error is None
    assert env.execute("print(n, context[-1])").stdout == '21 "\n'


@pytest.mark.parametrize("value", [b"\x00\xffraw", ["a", 1, None], {"k": [1, 2]}, "x" * 100_000])
def test_values_cross_intact(env, value):
    env.set_variable("data", value)
    assert env.execute("print(repr(data))").stdout.strip() == repr(value)


def test_stdout_stderr_and_errors(env):
    result = env.execute("import sys\nprint('out')\nprint('err', file=sys.stderr)\n1/0")
    assert result.stdout == "out\n" and result.stderr == "err\n"
    assert "ZeroDivisionError" in result.error


def test_huge_output_keeps_head_and_tail(env_factory):
    environment = env_factory(capture_limit=1000)
    environment.start(host)
    result = environment.execute("print('A' * 10_000 + 'END')")
    assert result.stdout.startswith("A" * 100) and result.stdout.rstrip().endswith("END")
    assert "characters dropped" in result.stdout and len(result.stdout) < 2000


def test_show_vars_lists_user_variables(env):
    env.execute("items = [1, 2, 3]\nname = 'x'\nimport json")
    shown = env.execute("SHOW_VARS()").stdout
    assert "items: list, len=3" in shown and "name: str" in shown
    assert "json" not in shown and "llm_query" not in shown


def test_helpers_reach_the_host(env):
    assert env.execute("print(llm_query('ping'))").stdout == "echo:ping\n"
    assert env.execute("print(budget()['iterations_left'])").stdout == "3\n"


def test_final_and_final_var(env):
    assert env.execute("FINAL(6 * 7)").final.text == "42"
    assert env.execute("answer = 'x'\nFINAL_VAR('answer')").final.text == "x"
    assert env.execute("FINAL_VAR('k', [1])").final.text == "[1]"


def test_final_lines_outside_code_run_as_blocks(env_name):
    """A FINAL line is code run in the REPL (its value), else its text: never an escape."""
    replies = [repl("x = 6 * 7"), "Done.\nFINAL(x)",
               "FINAL(exit(3))",
               "FINAL(the answer is 42)",
               "<!--\nFINAL('hidden')\n-->\nFINAL_VAR(x)"]
    with RLM(backend="scripted", environment=env_name, persistent=True,
             backend_kwargs={"responses": replies}) as rlm:
        assert rlm.completion("q").response == "42"
        result = rlm.completion("q")  # SystemExit in the REPL: the text is the answer
        assert (result.response, result.stop_reason) == ("exit(3)", "final")
        assert rlm.completion("q").response == "the answer is 42"
        assert rlm.completion("q").response == "42"


def test_final_answers_over_the_limit_are_refused_in_the_repl(env_name):
    replies = [repl("FINAL('x' * 11)"), "FINAL('y' * 11)", repl("FINAL('x' * 10)")]
    result = RLM(backend="scripted", environment=env_name, max_answer_chars=10,
                 backend_kwargs={"responses": replies}).completion("q")
    assert result.response == "x" * 10
    errors = [e.data["error"] for e in result.trace.code_executions]
    assert len(errors) == 3 and all("AnswerTooLong" in e for e in errors[:2])


def test_scaffold_is_restored(env):
    result = env.execute("context = 1\nllm_query = None")
    assert result.notes
    assert env.execute("print(context[:9], llm_query('q'))").stdout == "a context echo:q\n"


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
def test_exits_do_not_end_the_repl_or_the_host(env, code):
    env.execute("kept = 5")
    result = env.execute(code)
    assert result.error is not None
    # The same REPL goes on: a restarted one would have lost `kept`.
    assert env.execute("print('alive', kept)").stdout == "alive 5\n"


def test_parallel_environments_do_not_mix_output(env_factory):
    envs = [env_factory() for _ in range(3)]
    results = {}

    def work(i):
        envs[i].start(host)
        results[i] = envs[i].execute(f"for _ in range(40): print('env{i}')")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, result in results.items():
        assert result.stdout.split() == [f"env{i}"] * 40


@pytest.mark.parametrize("timeout_env", TIMEOUT_ENVIRONMENTS)
def test_a_runaway_block_is_stopped(timeout_env):
    environment = registry.create_environment(timeout_env, {"block_timeout_s": 1.0})
    try:
        environment.start(host)
        environment.set_variable("context", "kept")
        result = environment.execute("while True: pass")
        assert "TimeoutError" in result.error
        assert environment.execute("print(context)").stdout == "kept\n"
    finally:
        environment.close()


@pytest.mark.parametrize("timeout_env", TIMEOUT_ENVIRONMENTS)
def test_a_final_line_that_runs_forever_is_stopped(timeout_env):
    spin = "next(x for x in iter(int, 1) if x)"  # Python bytecode forever, no memory
    started = time.monotonic()
    result = RLM(backend="scripted", environment=timeout_env,
                 environment_kwargs={"block_timeout_s": 1.0},
                 backend_kwargs={"responses": [f"FINAL({spin})"]}).completion("q")
    assert (result.response, result.stop_reason) == (spin, "final")
    assert time.monotonic() - started < 60
    assert "TimeoutError" in result.trace.code_executions[0].data["error"]


def test_close_is_idempotent(env_factory):
    environment = env_factory()
    environment.start(host)
    environment.close()
    environment.close()


def test_end_to_end_with_children_and_budget(env_name):
    def reply(messages, depth):
        if depth == 0:
            return repl("r = rlm_query('child', context=[1, 2, 3])\nFINAL(r + llm_query('x'))")
        if len(messages) > 1:
            return repl("FINAL(str(sum(context)))")
        return "!"

    result = RLM(backend="scripted", environment=env_name, max_depth=2,
                 backend_kwargs={"responses": reply, "cost_per_call": 0.1}).completion("c")
    assert result.response == "6!"
    assert result.trace.children[0].depth == 1
    assert result.cost_usd == pytest.approx(0.3)


def test_persistence_across_completions(env_name):
    replies = [repl("memo = context.upper()\nFINAL('ok')"), repl("FINAL(memo + context_1)")]
    with RLM(backend="scripted", environment=env_name, persistent=True,
             backend_kwargs={"responses": replies}) as rlm:
        rlm.completion("q", context="ab")
        assert rlm.completion("q", context="cd").response == "ABcd"


# Tools: a self-contained function travels as its source (with the module, constant and
# helper function it uses); code is defined in the REPL as it is.
SCALE = 10


def _double(x):
    return 2 * x


def scaled(text: str) -> int:
    """Twice the length of ``text`` times SCALE."""
    return _double(len(text) * SCALE)


CODE_TOOLS = {
    "shout": "import string\ndef shout(s):\n    return s.upper() + string.punctuation[0]",
    "ask": "def ask(q):\n    return llm_query('tool:' + q)",
}


def test_tools_given_as_functions_and_as_code(env_factory):
    environment = env_factory()
    environment.start(host, make_tools({"scaled": scaled, **CODE_TOOLS}))
    environment.set_variable("context", "abc")
    result = environment.execute("print(scaled(context), shout('hi'), ask('x'))")
    assert (result.error, result.stdout) == (None, "60 HI! echo:tool:x\n")
    assert environment.execute("scaled = None").notes  # restored like the helpers
    assert environment.execute("print(scaled('a'))").stdout == "20\n"
    assert "scaled" not in environment.execute("print(SHOW_VARS())").stdout


def test_a_tool_that_fails_to_load_fails_the_start(env_factory):
    environment = env_factory()
    broken = make_tools({"bad": "def bad():\n    return 1\nraise ValueError('nope')"})
    with pytest.raises(EnvStartError, match=r"bad.*nope"):
        environment.start(host, broken)


def test_tools_through_a_completion(env_name):
    result = RLM(backend="scripted", environment=env_name, tools={"scaled": scaled},
                 backend_kwargs={"responses": [repl("FINAL(scaled(context))")]}
                 ).completion("q", context="abcd")
    assert result.response == "80"
