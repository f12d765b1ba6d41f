"""Bounds on what crosses to the host (answers, child results, output, traces) and
failures of environments and backends coming back as rlm errors with ``exc.partial``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path

import pytest

from rlm import RLM, Environment, ExecResult
from rlm.bridge.guest import SETTINGS_NAME, GuestRuntime
from rlm.core.handler import LMHandler
from rlm.core.limits import Budget, Limits
from rlm.core.routing import ModelRouter
from rlm.environments.local import LocalEnvironment
from rlm.errors import BackendError, ConfigError, EnvError
from rlm.result import RLMResult
from rlm.trace.sinks import MemorySink
from rlm.trace.tracer import Tracer
from rlm.types import Answer, NodeRef
from tests.conftest import repl

BIG = 200_000_000  # characters: the size of the review's example


def run(replies, prompt="the input", **kwargs) -> RLMResult:
    backend_kwargs = {"responses": replies}
    backend_kwargs.update(kwargs.pop("backend_kwargs", {}))
    return RLM(backend="scripted", backend_kwargs=backend_kwargs, **kwargs).completion(prompt)


# -- final answers --------------------------------------------------------------------------
def test_a_200_mb_final_is_refused_in_the_repl_and_never_reaches_the_trace(tmp_path: Path):
    trace = tmp_path / "trace.jsonl"
    result = run([repl(f"FINAL('x' * {BIG})"), repl("FINAL('short')")], trace=trace)
    assert (result.response, result.stop_reason) == ("short", "final")
    refused = result.trace.code_executions[0].data
    assert refused["final"] is None and "AnswerTooLong" in refused["error"]
    assert "max_answer_chars" in refused["error"] and len(refused["error"]) < 1000
    assert trace.stat().st_size < 100_000


def test_the_subprocess_repl_refuses_a_200_mb_final_before_sending_it():
    from rlm.environments.subprocess_env import SubprocessEnvironment

    with SubprocessEnvironment(memory_mb=None) as env:
        env.start(lambda message: {"error": {"type": "X", "message": "unused"}})
        env.set_variable(SETTINGS_NAME, {"max_answer_chars": 1_000_000})
        result = env.execute(f"FINAL('x' * {BIG})")
        assert result.final is None and "AnswerTooLong" in result.error
        assert len(result.error) + len(result.stdout) + len(result.stderr) < 1000
        assert env.execute("FINAL('x' * 1_000_000)").final.text == "x" * 1_000_000


def test_max_answer_chars_is_configurable_and_checked():
    result = run([repl("FINAL('x' * 11)"), repl("FINAL('x' * 10)")], max_answer_chars=10)
    assert result.response == "x" * 10
    assert run([repl("FINAL('x' * 2_000_000)")], max_answer_chars=None).response == (
        "x" * 2_000_000)
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(ConfigError, match="max_answer_chars"):
            RLM(backend="scripted", backend_kwargs={"responses": []}, max_answer_chars=bad)


def test_final_var_is_bounded_too():
    replies = [repl("big = 'y' * 50\nFINAL_VAR('big')"), "FINAL_VAR('big')",
               repl("FINAL_VAR('short', 'ok')")]
    result = run(replies, max_answer_chars=20)
    assert result.response == "ok"
    assert [("AnswerTooLong" in (e.data["error"] or "")) for e in
            result.trace.code_executions] == [True, True, False]


def test_an_over_long_final_line_is_fed_back_not_replaced_by_its_text():
    result = run([repl("big = 'x' * 20"), "FINAL(big)", repl("FINAL('ok')")],
                 max_answer_chars=10)
    assert result.response == "ok"  # not "big"


def test_an_environment_ignoring_the_setting_is_cut_by_the_loop():
    class Careless(LocalEnvironment):
        def set_variable(self, name, value):
            if name != SETTINGS_NAME:
                super().set_variable(name, value)

    result = RLM(backend="scripted", environment=Careless, max_answer_chars=100,
                 backend_kwargs={"responses": [repl("FINAL('z' * 5000)")]}).completion("q")
    assert result.response.startswith("z" * 100) and "answer truncated" in result.response
    assert len(result.response) < 200


# -- child results and sub-call replies ---------------------------------------------------
def test_a_child_returning_a_huge_answer_is_truncated_with_a_marker():
    def reply(messages, depth):
        if depth == 0:
            return repl("r = rlm_query('child')\nFINAL(str(len(r)) + '|' + r[-120:])")
        return "y" * 50_000  # prose: the child stops on the limit with it as its answer

    result = RLM(backend="scripted", max_depth=2, max_iterations=2, extract_on_limit=False,
                 max_answer_chars=1000, backend_kwargs={"responses": reply}).completion("q")
    length, tail = result.response.split("|", 1)
    assert 1000 < int(length) < 1100
    assert "answer truncated: 49,000 of 50,000 characters dropped" in tail


def test_llm_query_replies_and_plain_rlm_query_replies_are_bounded():
    def reply(messages, depth):
        if depth == 0:
            return repl("a = llm_query('x')\nb = rlm_query('y')\n"
                        "bs = llm_query_batched(['p', 'q'])\n"
                        "FINAL([len(a), len(b)] + [len(s) for s in bs] + ['truncated' in a])")
        return "w" * 10_000

    result = run(reply, max_answer_chars=500)
    lengths = json.loads(result.response)
    assert all(500 < n < 600 for n in lengths[:4]) and lengths[4] is True


def test_the_handler_caps_what_spawn_child_returns():
    budget = Budget(Limits(max_depth=3))
    handler = LMHandler(ModelRouter(_never_backend()), budget, Tracer(MemorySink()),
                        spawn_child=lambda prompt, context, parent: "c" * 1_000_000,
                        max_answer_chars=1000)
    node = NodeRef("r", None, 0)
    text = handler.handle({"op": "rlm_query", "prompt": "p"}, node)["text"]
    assert text.startswith("c" * 1000) and len(text) < 1100 and "999,000" in text
    results = handler.handle({"op": "rlm_query_batched", "prompts": ["a"] * 4}, node)["results"]
    assert all(len(r["text"]) < 1100 for r in results)


def _never_backend():
    from rlm.backends.scripted import ScriptedBackend

    return ScriptedBackend([])


# -- output captured in the REPL -----------------------------------------------------------
def test_captured_output_and_errors_never_exceed_the_capture_limit():
    runtime = GuestRuntime(lambda m: {}, capture_limit=1000)
    out = runtime.run_cell("print('a' * 500 + 'b' * 1000 + 'c' * 10)")
    assert len(out["stdout"]) < 1100 and out["stdout"].endswith("b" * 489 + "c" * 10 + "\n")
    assert out["stdout"].startswith("a" * 500) and "characters dropped" in out["stdout"]
    err = runtime.run_cell("raise ValueError('e' * 100_000)")["error"]
    assert len(err) < 1100 and err.startswith("Traceback") and err.endswith("e" * 100)


# -- traces ---------------------------------------------------------------------------------
def test_trace_events_keep_a_bounded_preview_and_a_hash(tmp_path: Path):
    big = "q" * 300_000
    trace = tmp_path / "trace.jsonl"
    result = run([f"{big}\nFINAL(done)"], trace=trace)
    assert result.response == "done"
    call = result.trace.lm_calls[0].data
    assert call["response_chars"] == len(big) + len("\nFINAL(done)")
    assert call["response_sha256"] == hashlib.sha256(
        (big + "\nFINAL(done)").encode()).hexdigest()
    assert len(call["response"]) < 100_200 and "trace preview" in call["response"]
    assert trace.stat().st_size < 150_000


def test_long_answers_and_code_are_previewed_in_the_trace():
    code = "x = 1  # " + "c" * 200_000 + "\nFINAL('a' * 150_000)"
    result = run([repl(code)])
    assert result.response == "a" * 150_000  # the result itself is whole
    final = next(e for e in result.trace.events if e.type == "final").data
    assert final["response_chars"] == 150_000 and len(final["response"]) < 100_200
    exec_event = result.trace.code_executions[0].data
    assert exec_event["code_chars"] == len(code) and len(exec_event["code"]) < 100_200
    assert exec_event["final"]["text_chars"] == 150_000
    assert result.trace.response == final["response"]


# -- FINAL lines -------------------------------------------------------------------------------
def test_a_final_line_that_exits_is_an_answer_not_an_exit():
    for line in ("FINAL(exit(3))", "FINAL(__import__('sys').exit(3))",
                 "FINAL(__import__('os')._exit(3))", "FINAL(raise_it())"):
        result = run([line])
        assert (result.response, result.stop_reason) == (line[6:-1], "final")


def test_a_final_line_that_sleeps_is_stopped_by_max_timeout():
    line = "FINAL(__import__('time').sleep(60))"
    started = time.monotonic()
    result = RLM(backend="scripted", environment="subprocess", max_timeout=2,
                 backend_kwargs={"responses": [line]}).completion("q")
    assert time.monotonic() - started < 30
    assert result.response == line[6:-1]
    assert "TimeoutError" in result.trace.code_executions[0].data["error"]


def test_a_final_line_fallback_is_not_a_model_error():
    result = run(["FINAL(the answer is 42)"], max_errors=0)
    assert (result.response, result.stop_reason) == ("the answer is 42", "final")


def test_a_final_line_in_an_html_comment_is_not_the_answer():
    result = run(["Let me look first.\n<!-- \nFINAL(x)\n-->", repl("FINAL('real')")])
    assert result.response == "real"


# -- failures come back as rlm errors with the partial result ------------------------------
class Failing(LocalEnvironment):
    """A local REPL whose ``failing`` operation raises ``exc`` (or returns ``returns``)."""

    def __init__(self, failing: str, exc: BaseException | None = None, returns=None):
        super().__init__()
        self.failing, self.exc, self.returns = failing, exc, returns

    def _maybe(self, operation: str) -> bool:
        """Whether ``operation`` is the failing one (raising ``exc`` when there is one)."""
        if operation != self.failing:
            return False
        if self.exc is not None:
            raise self.exc
        return True

    def execute(self, code, *, timeout_s=None):
        if self._maybe("execute"):
            return self.returns
        return super().execute(code, timeout_s=timeout_s)

    def set_variable(self, name, value):
        if name == "context" and self._maybe("set_variable"):
            return
        super().set_variable(name, value)

    def close(self):
        super().close()
        self._maybe("close")


@pytest.mark.parametrize("exc", [ProcessLookupError("the REPL process ended"),
                                 SystemExit(3), TypeError("bad frame"), KeyError("final")])
def test_a_raw_exception_from_execute_is_an_env_error_with_the_partial(exc):
    env = Failing("execute", exc)
    with pytest.raises(EnvError) as info:
        RLM(backend="scripted", environment=lambda: env,
            backend_kwargs={"responses": [repl("FINAL(1)")]}).completion("q")
    assert info.value.__cause__ is exc
    assert type(exc).__name__ in str(info.value)
    partial = info.value.partial
    assert isinstance(partial, RLMResult) and partial.stop_reason == "error"
    assert partial.usage["scripted"].calls == 1


@pytest.mark.parametrize("returns", [
    None, ExecResult(stdout=5), ExecResult(final=Answer(["not", "text"])),  # type: ignore
    ExecResult(notes=(1,)),  # type: ignore[arg-type]
])
def test_a_malformed_block_result_is_an_env_error_with_the_partial(returns):
    with pytest.raises(EnvError, match="malformed") as info:
        RLM(backend="scripted", environment=lambda: Failing("execute", returns=returns),
            backend_kwargs={"responses": [repl("FINAL(1)")]}).completion("q")
    assert info.value.partial.usage["scripted"].calls == 1


def test_a_raw_exception_while_starting_is_an_env_error_with_the_partial():
    env = Failing("set_variable", ProcessLookupError("gone"))
    with pytest.raises(EnvError, match="set_variable") as info:
        RLM(backend="scripted", environment=lambda: env,
            backend_kwargs={"responses": [repl("FINAL(1)")]}).completion("q")
    assert isinstance(info.value.partial, RLMResult)


def test_a_raw_exception_while_closing_keeps_the_result_in_partial():
    env = Failing("close", OSError("cannot remove the scratch directory"))
    with pytest.raises(EnvError, match="close") as info:
        RLM(backend="scripted", environment=lambda: env,
            backend_kwargs={"responses": [repl("FINAL('the answer')")]}).completion("q")
    assert info.value.partial.response == "the answer"


def test_async_runs_map_raw_exceptions_too():
    env = Failing("execute", ProcessLookupError("dead"))
    model = RLM(backend="scripted", environment=lambda: env,
                backend_kwargs={"responses": [repl("FINAL(1)")]})
    with pytest.raises(EnvError) as info:
        asyncio.run(model.acompletion("q"))
    assert info.value.partial.usage["scripted"].calls == 1


def test_a_child_environment_failure_is_an_error_in_the_parents_code():
    made = []

    def factory() -> Environment:
        env = LocalEnvironment() if not made else Failing("execute", SystemExit(3))
        made.append(env)
        return env

    def reply(messages, depth):
        if depth == 0:
            return repl("try:\n    rlm_query('c')\nexcept LMQueryError as e:\n"
                        "    FINAL(e.kind)")
        return repl("FINAL(1)")

    result = RLM(backend="scripted", environment=factory, max_depth=2,
                 backend_kwargs={"responses": reply}).completion("q")
    assert result.response == "EnvError"


def test_a_raw_exception_from_a_backend_is_a_backend_error_with_the_partial():
    def reply(messages, depth):
        if len(messages) > 2:
            raise RuntimeError("the backend has a bug")
        return repl("x = 1")

    with pytest.raises(BackendError, match="RuntimeError") as info:
        run(reply)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert info.value.partial.usage["scripted"].calls == 1  # the failed call is not charged


def test_keyboard_interrupt_still_passes_through():
    env = Failing("execute", KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        RLM(backend="scripted", environment=lambda: env,
            backend_kwargs={"responses": [repl("FINAL(1)")]}).completion("q")
