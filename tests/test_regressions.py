"""Bugs of the reference implementation (rlms 0.1.3) that must never appear here."""

from __future__ import annotations

import re

import pytest

from rlm import RLM, RLMResult
from tests.conftest import repl


def test_child_costs_are_counted_in_the_root_result():
    def reply(messages, depth):
        if depth == 0:
            return repl("FINAL(rlm_query('child', context='data'))")
        if len(messages) > 1:
            return repl("FINAL(llm_query('leaf') + '!')")
        return "leaf"

    result = RLM(backend="scripted", backend_kwargs={"responses": reply, "cost_per_call": 0.25},
                 max_depth=2).completion("c")
    assert result.response == "leaf!"
    assert result.usage["scripted"].calls == 3
    assert result.cost_usd == pytest.approx(0.75)


def test_root_usage_is_not_overwritten_by_a_sub_model_of_the_same_name(scripted):
    root = scripted([repl("a = llm_query('1')\nb = llm_query('2')\nFINAL(a + b)")],
                    model="gpt-x", cost_per_call=1.0)
    sub = scripted(["x", "y"], model="gpt-x", cost_per_call=0.5)
    result = RLM(backend=root, sub_backend=sub).completion("c")
    assert result.usage["gpt-x"].calls == 3
    assert result.cost_usd == pytest.approx(2.0)


def test_parallel_children_prints_stay_in_their_own_output():
    def reply(messages, depth):
        if depth == 0:
            return repl("print('ROOT')\nrs = rlm_query_batched([f'child{i}' for i in range(6)])\n"
                        "print('ROOT-AFTER')\nFINAL('|'.join(rs))")
        tag = re.search(r"child\d", messages[1]["content"]).group(0)
        return repl(f"import time\nfor i in range(30):\n    print('{tag}')\n    time.sleep(0.002)\n"
                    f"FINAL('{tag}')")

    result = RLM(backend="scripted", backend_kwargs={"responses": reply},
                 max_depth=2).completion("c")
    assert result.response == "|".join(f"child{i}" for i in range(6))
    root_out = result.trace.code_executions[0].data["stdout"]
    assert root_out.split() == ["ROOT", "ROOT-AFTER"]
    for child in result.trace.children:
        tag = child.response
        assert child.code_executions[0].data["stdout"].split() == [tag] * 30


def test_answer_in_the_step_that_crosses_the_budget_counts():
    result = RLM(backend="scripted",
                 backend_kwargs={"responses": [repl("x = llm_query('q')\nFINAL('got ' + x)"), "it"],
                                 "cost_per_call": 0.5},
                 max_budget=1.0).completion("c")
    # the sub-call spent the last of the budget (the tree is tripped), then FINAL ran
    assert (result.response, result.stop_reason) == ("got it", "final")
    assert result.cost_usd == pytest.approx(1.0)


def test_answer_in_the_last_allowed_iteration_counts():
    result = RLM(backend="scripted",
                 backend_kwargs={"responses": [repl("x = 1"), repl("FINAL('last')")]},
                 max_iterations=2).completion("c")
    assert (result.response, result.stop_reason) == ("last", "final")


def test_fence_inside_a_string_literal_does_not_break_the_block():
    code = 'marker = """\n```\n"""\nFINAL(str(len(marker)))'
    result = RLM(backend="scripted", backend_kwargs={"responses": [repl(code)]}).completion("c")
    assert result.response == "5"


def test_context_ending_in_a_quote_loads_intact():
    data = 'He said "stop"'
    result = RLM(backend="scripted",
                 backend_kwargs={"responses": [repl("FINAL(context)")]}).completion(data)
    assert result.response == data


def test_sys_exit_in_model_code_does_not_kill_the_host():
    result = RLM(backend="scripted",
                 backend_kwargs={"responses": [repl("import sys\nsys.exit(1)"),
                                               repl("FINAL('survived')")]}).completion("c")
    assert result.response == "survived"


def test_final_mentioned_in_prose_does_not_end_the_run():
    result = RLM(backend="scripted", backend_kwargs={"responses": [
        "My plan: inspect context, then FINAL(answer) with the count.",
        repl("FINAL(len(context))"),
    ]}).completion("abc")
    assert (result.response, result.iterations) == ("3", 2)


def test_trace_file_grows_linearly(tmp_path):
    def size(turns: int) -> int:
        path = tmp_path / f"t{turns}.jsonl"
        replies = [repl(f"print('turn {i}' * 20)") for i in range(turns - 1)]
        replies.append(repl("FINAL('done')"))
        RLM(backend="scripted", backend_kwargs={"responses": replies},
            max_iterations=turns, trace=path).completion("x" * 1000)
        return path.stat().st_size

    small, large = size(10), size(40)
    assert large / small < 4 * 1.3  # 4x the turns: about 4x the bytes, not 16x


def test_max_depth_always_returns_a_result_object():
    result = RLM(backend="scripted", backend_kwargs={"responses": ["no code, no answer"]},
                 max_depth=1, max_iterations=1, extract_on_limit=False).completion("c")
    assert isinstance(result, RLMResult) and result.stop_reason == "max_iterations"
