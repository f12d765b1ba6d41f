"""The wording the model reads: the small profile's example and its push-back on misses."""

import contextlib
import io
import re

from rlm.core.excerpts import keep_matches, search_terms
from rlm.core.prompts import SMALL_SYSTEM_PROMPT, system_prompt, turn_feedback
from rlm.types import ExecResult


def _feedback(*outputs: ExecResult, style: str = "small") -> str:
    return turn_feedback([("code", out) for out in outputs], iteration=1,
                         max_output_chars=10_000, iterations_left=3, prompt_profile=style)


def test_small_example_search_ignores_case_and_word_order():
    # The small models copy the worked example, so the example's search must survive a
    # question whose capitalisation and word order differ from the text's.
    example = re.search(r"```python\n(.*?)```", SMALL_SYSTEM_PROMPT, re.S).group(1)
    code = example.replace("\\\\n", "\\n")
    needle = "2024-03-01 port 8443 opened by the Payments service"
    lines = "noise line\n" + needle + "\nmore noise"
    # A document without line breaks: the window around the match still shows the needle.
    one_line = "filler words " * 5_000 + needle + " trailing words" * 5_000
    for context in (lines, one_line):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(code, {"context": context})
        assert needle in printed.getvalue()
        # What the model is shown is cut around the example's own search words.
        shown = keep_matches(printed.getvalue(), 2_000, search_terms(code))
        assert needle in shown and len(shown) < 2_500


def test_small_profile_refuses_final_after_a_search_that_found_nothing():
    for miss in (ExecResult(stdout=""), ExecResult(stdout="0\n"), ExecResult(stdout="[]"),
                 ExecResult(error="AttributeError: 'NoneType' object has no attribute 'group'")):
        text = _feedback(miss)
        assert "found nothing" in text and "do not call FINAL" in text
        assert "(3 turns left)" in text


def test_small_profile_invites_final_when_a_block_printed_something():
    text = _feedback(ExecResult(stdout="2026-03-01 code 32-ALPHA-693"))
    assert "reply with a block calling FINAL(answer)" in text
    assert "found nothing" not in text
    # One block that found something is enough among several.
    assert "found nothing" not in _feedback(ExecResult(stdout=""), ExecResult(stdout="7"))


def test_default_profile_has_no_miss_push_back():
    assert "found nothing" not in _feedback(ExecResult(stdout=""), style="default")
    assert "FINAL(answer)" in _feedback(ExecResult(stdout=""), style="default")


def test_sub_call_help_follows_the_switch():
    with_sub = system_prompt(depth=0, max_depth=2, prompt_profile="small")
    without = system_prompt(depth=0, max_depth=2, prompt_profile="small", sub_calls=False)
    assert "llm_query" in with_sub and "llm_query" not in without
