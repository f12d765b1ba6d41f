"""The RLM loop end to end on the scripted backend and the local REPL."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from rlm import RLM, RLMResult
from rlm.errors import BadResponseError, ConfigError
from tests.conftest import repl


def run(replies, prompt="the input", **kwargs) -> RLMResult:
    backend_kwargs = {"responses": replies}
    backend_kwargs.update(kwargs.pop("backend_kwargs", {}))
    return RLM(backend="scripted", backend_kwargs=backend_kwargs, **kwargs).completion(prompt)


def test_prompt_is_the_context_and_result_is_typed():
    result = run([repl("FINAL(context.upper())")], prompt="abc")
    assert isinstance(result, RLMResult)
    assert (result.response, result.stop_reason, result.iterations) == ("ABC", "final", 1)
    assert result.usage["scripted"].calls == 1
    assert result.elapsed_s >= 0 and result.trace.run_id == result.run_id


def test_question_is_shown_and_context_goes_to_the_repl():
    seen = []

    def reply(messages, depth):
        seen.append(messages)
        return repl("FINAL(str(sum(context)))")

    result = RLM(backend="scripted", backend_kwargs={"responses": reply}).completion(
        "What is the sum?", context=[1, 2, 3])
    assert result.response == "6"
    first_user = seen[0][1]["content"]
    assert "What is the sum?" in first_user and "list of 3 items" in first_user


@pytest.mark.parametrize(
    ("context", "code", "expected"),
    [
        (b"bytes in", "FINAL(context)", "bytes in"),
        ({"a": 1, "b": 2}, "FINAL(sorted(context))", '["a", "b"]'),
        ('ends with a quote"', "FINAL(context[-1])", '"'),
        ('"""triple\'\'\' and \\ backslash', "FINAL(len(context))", "28"),
    ],
)
def test_context_kinds(context, code, expected):
    result = RLM(backend="scripted", backend_kwargs={"responses": [repl(code)]}).completion(
        "q", context=context)
    assert result.response == expected


def test_path_contexts_file_and_folder(tmp_path: Path):
    (tmp_path / "doc.txt").write_text("hello file")
    folder = tmp_path / "tree"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("A")
    (folder / "sub" / "b.txt").write_text("BB")
    r1 = run([repl("FINAL(context)")], prompt=tmp_path / "doc.txt")
    assert r1.response == "hello file"
    r2 = run([repl("FINAL(','.join(f'{k}={len(context[k])}' for k in context))")],
             prompt=folder)
    assert r2.response == "a.txt=1,sub/b.txt=2"


def test_missing_context_path_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        run([repl("FINAL(1)")], prompt=tmp_path / "nope.txt")


def test_variables_persist_between_turns_and_output_is_fed_back():
    replies = [repl("n = len(context)\nprint('n is', n)"), repl("FINAL(n * 2)")]
    seen = []

    def reply(messages, depth):
        seen.append(messages[-1]["content"])
        return replies[len(seen) - 1]

    result = RLM(backend="scripted", backend_kwargs={"responses": reply}).completion("12345")
    assert result.response == "10"
    assert "n is 5" in seen[1]


def test_no_code_gets_a_nudge_then_the_run_goes_on():
    seen = []

    def reply(messages, depth):
        seen.append(messages[-1]["content"])
        return "The answer is probably 7." if len(seen) == 1 else repl("FINAL(7)")

    assert RLM(backend="scripted", backend_kwargs={"responses": reply}).completion(
        "x").response == "7"
    assert "no ```repl code block" in seen[1]


def test_final_line_outside_code_is_accepted():
    assert run(["I counted.\nFINAL(the answer is 42)"]).response == "the answer is 42"
    assert run([repl("x = 40 + 2"), "FINAL_VAR(x)"]).response == "42"
    assert run([repl("x = 5"), "FINAL(x)"]).response == "5"


def test_prose_mentioning_final_does_not_end_the_run():
    result = run(["I will call FINAL(answer) once I know it.", repl("FINAL('done')")])
    assert result.response == "done" and result.iterations == 2


def test_final_var_forms():
    assert run([repl("answer = 'a'\nFINAL_VAR('answer')")]).response == "a"
    assert run([repl("FINAL_VAR('key', [1, 2])")]).response == "[1, 2]"
    assert run([repl("FINAL_VAR(99)")]).response == "99"
    # an undefined name is an error the model sees, not an answer
    result = run([repl("FINAL_VAR('missing')"), repl("FINAL('ok')")])
    assert result.response == "ok" and result.iterations == 2


def test_output_is_truncated_with_a_marker():
    seen = []

    def reply(messages, depth):
        seen.append(messages[-1]["content"])
        return repl("print('x' * 50_000)") if len(seen) == 1 else repl("FINAL(1)")

    RLM(backend="scripted", backend_kwargs={"responses": reply},
        max_output_chars=1000).completion("c")
    assert "[output truncated: 49,001 of 50,001 characters not shown]" in seen[1]
    assert len(seen[1]) < 1500


def test_llm_query_goes_to_the_sub_model_and_usage_is_per_model(scripted):
    root = scripted([repl("r = llm_query('hi')\nFINAL(r)")], model="root-model")
    sub = scripted(["sub says hi"], model="sub-model", cost_per_call=0.5)
    result = RLM(backend=root, sub_backend=sub).completion("c")
    assert result.response == "sub says hi"
    assert result.usage["root-model"].calls == 1 and result.usage["sub-model"].calls == 1
    assert result.cost_usd == pytest.approx(0.5)


def test_named_models_and_unknown_name(scripted):
    root = scripted([
        repl("print(llm_query('q', model='nope'))"),
        repl("FINAL(llm_query('q', model='big'))"),
    ])
    big = scripted(["from big"], model="big-one")
    seen = []
    original = root._responses

    def reply(messages, depth):
        seen.append(messages[-1]["content"])
        return original[len(seen) - 1]

    root._responses = reply
    result = RLM(backend=root, models={"big": big}).completion("c")
    assert result.response == "from big"
    assert "UnknownModelError" in seen[1] and "big" in seen[1]


def test_batched_calls_run_concurrently_in_order_and_fail_per_slot():
    # A failed slot is a QueryFailed, a str subclass: the model detects it by its text.
    root_turn = repl(
        "rs = llm_query_batched([f'q{i}' for i in range(16)])\n"
        "FINAL('|'.join('ERR' if r.startswith('[query failed') else r for r in rs))"
    )

    def reply(messages, depth):
        if depth == 0:
            return root_turn
        prompt = messages[-1]["content"]
        if prompt == "q3":
            raise BadResponseError("boom")
        return prompt.upper()

    started = time.monotonic()
    result = RLM(backend="scripted",
                 backend_kwargs={"responses": reply, "latency_s": 0.2}).completion("c")
    elapsed = time.monotonic() - started
    parts = result.response.split("|")
    assert parts[:5] == ["Q0", "Q1", "Q2", "ERR", "Q4"] and parts[-1] == "Q15"
    assert elapsed < 16 * 0.2 / 2  # concurrent, not one after another


def test_rlm_query_runs_a_child_with_its_own_repl_one_level_deeper():
    def reply(messages, depth):
        if depth == 0:
            return repl("secret = 'root-only'\nans = rlm_query('child q', context='abcdef')\n"
                        "FINAL(ans)")
        if "child q" in messages[1]["content"]:  # the child's own loop
            return repl("FINAL(str(len(context)) + ':' + str('secret' in globals()))")
        return "plain"

    result = RLM(backend="scripted", backend_kwargs={"responses": reply},
                 max_depth=2).completion("c")
    assert result.response == "6:False"
    child = result.trace.children[0]
    assert child.depth == 1 and child.parent_run_id == result.run_id
    assert child.response == "6:False"


def test_rlm_query_at_max_depth_is_a_plain_lm_call_returning_a_string():
    def reply(messages, depth):
        if depth == 0:
            return repl("r = rlm_query('q', context='ctx')\nFINAL(type(r).__name__ + ':' + r)")
        return "plain answer"

    result = RLM(backend="scripted", backend_kwargs={"responses": reply},
                 max_depth=1).completion("c")
    assert result.response == "str:plain answer"
    assert result.trace.children == []
    purposes = [e.data["purpose"] for e in result.trace.lm_calls]
    assert purposes == ["turn", "rlm_query_fallback"]


def test_tools_are_exposed_and_names_checked():
    def word_count(text: str) -> int:
        """Count words."""
        return len(text.split())

    result = RLM(backend="scripted",
                 backend_kwargs={"responses": [repl("FINAL(word_count(context))")]},
                 tools={"word_count": word_count}).completion("a b c")
    assert result.response == "3"
    with pytest.raises(ConfigError, match="clash"):
        RLM(backend="scripted", backend_kwargs={"responses": []}, tools={"context": len})


def test_budget_helper_reports_what_is_left():
    result = run([repl("b = budget()\nFINAL(json.dumps(b) if False else b['iterations_left'])")],
                 max_iterations=5)
    assert result.response == "4"


def test_async_completion_matches_sync():
    replies = [repl("x = len(context)"), repl("FINAL(llm_query('sub') + str(x))"), "S"]
    sync = run(list(replies), prompt="abcd")
    result = asyncio.run(RLM(backend="scripted", backend_kwargs={"responses": list(replies)})
                         .acompletion("abcd"))
    assert (result.response, result.stop_reason, result.iterations) == (
        sync.response, sync.stop_reason, sync.iterations) == ("S4", "final", 2)
    assert result.usage["scripted"].to_dict() == sync.usage["scripted"].to_dict()


def test_persistent_session_keeps_state_and_history():
    replies = [
        repl("first = context\nFINAL('one')"),
        repl("FINAL(first + '+' + context + '|' + context_0 + '|' + history[0]['answer'])"),
    ]
    seen = []

    def reply(messages, depth):
        seen.append(messages)
        return replies[len(seen) - 1]

    with RLM(backend="scripted", backend_kwargs={"responses": reply}, persistent=True) as rlm:
        assert rlm.completion("q1", context="A").response == "one"
        assert rlm.completion("q2", context="B").response == "A+B|A|one"
    assert "context_0, context_1" in seen[1][1]["content"]


def test_backend_failure_raises_with_partial_result():
    with pytest.raises(BadResponseError) as info:
        run([repl("x = 1")])  # the second turn finds no scripted reply left
    partial = info.value.partial
    assert isinstance(partial, RLMResult)
    assert partial.usage["scripted"].calls == 1
    assert [e.type for e in partial.trace.events][-1] == "run_end"


def test_trace_file_rebuilds_the_tree(tmp_path: Path):
    from rlm.trace import load

    def reply(messages, depth):
        if depth == 0:
            return repl("FINAL(rlm_query('child', context='xy'))")
        return repl("FINAL(llm_query('leaf'))") if len(messages) > 1 else "leaf!"

    path = tmp_path / "t.jsonl"
    result = RLM(backend="scripted", backend_kwargs={"responses": reply}, max_depth=3,
                 trace=path).completion("c")
    assert result.trace_path == str(path)
    tree = load(path)
    assert tree.run_id == result.run_id and tree.response == "leaf!"
    (child,) = tree.children
    assert child.depth == 1 and [e.data["purpose"] for e in child.lm_calls] == [
        "turn", "llm_query"]
    assert tree.usage["scripted"].calls == result.usage["scripted"].calls == 3
    lines = path.read_text().splitlines()
    assert all(json.loads(line)["run_id"] for line in lines)


def test_a_100_mb_string_context_works_in_the_local_repl():
    data = "x" * (100 * 1024 * 1024 - 6) + "NEEDLE"
    result = RLM(backend="scripted",
                 backend_kwargs={"responses": [repl("FINAL(context[-6:] + str(len(context)))")]}
                 ).completion("find it", context=data)
    assert result.response == f"NEEDLE{len(data)}"
    sent = result.trace.lm_calls[0]
    assert sent.data["input_tokens"] < 10_000  # the model saw a preview, not the input


def test_failed_batch_slots_are_query_failed_instances():
    def reply(messages, depth):
        if depth == 0:
            return repl("rs = llm_query_batched(['ok', 'bad'])\n"
                        "FINAL([isinstance(r, QueryFailed) for r in rs])")
        if messages[-1]["content"] == "bad":
            raise BadResponseError("nope")
        return "fine"

    result = RLM(backend="scripted", backend_kwargs={"responses": reply}).completion("c")
    assert result.response == "[false, true]"


def test_an_environment_instance_serves_the_root_and_the_caller_closes_it():
    from rlm.environments.local import LocalEnvironment

    env = LocalEnvironment()
    rlm = RLM(backend="scripted", environment=env,
              backend_kwargs={"responses": [repl("kept = 1\nFINAL('a')"), repl("FINAL(kept)")]})
    assert rlm.completion("c").response == "a"
    assert rlm.completion("c").response == "1"  # same REPL: state kept, not closed
    env.close()


def test_a_bad_context_path_cleans_up_the_run(tmp_path):
    rlm = RLM(backend="scripted", backend_kwargs={"responses": []}, max_timeout=60)
    with pytest.raises(ConfigError):
        rlm.completion("q", context=tmp_path / "missing.txt")
    assert rlm.engine._active == set()


def test_secrets_never_reach_the_trace_in_memory_or_on_disk(tmp_path):
    from rlm.backends.scripted import ScriptedBackend

    class KeyedBackend(ScriptedBackend):
        def secrets(self):
            return ["sk-test-SECRET-123"]

    backend = KeyedBackend([repl("print('key is sk-test-SECRET-123')\nFINAL('x')")])
    path = tmp_path / "t.jsonl"
    result = RLM(backend=backend, trace=path).completion("c")
    assert "sk-test-SECRET-123" not in path.read_text()
    assert "[REDACTED]" in path.read_text()
    assert "sk-test-SECRET-123" not in json.dumps(result.trace.to_dict())


def test_sub_calls_can_be_disabled():
    seen = []

    def reply(messages, depth):
        seen.append(messages)
        return repl("try:\n    llm_query('x')\nexcept LMQueryError as e:\n    FINAL(e.kind)")

    result = RLM(backend="scripted", backend_kwargs={"responses": reply},
                 sub_calls=False).completion("c")
    assert result.response == "SubCallsDisabled"
    assert "llm_query and rlm_query are disabled" in seen[0][0]["content"]
    assert "llm_query(prompt) -> str" not in seen[0][0]["content"]
    assert result.usage["scripted"].calls == 1


def test_output_token_caps_reach_the_backend(scripted):
    backend = scripted([repl("FINAL(llm_query('q'))"), "a"])
    RLM(backend=backend, max_output_tokens=300, sub_call_max_output_tokens=40).completion("c")
    assert [r.max_output_tokens for r in backend.calls] == [300, 40]
