"""The small profile names a strategy when the question's wording calls for one."""

from __future__ import annotations

from rlm import RLM
from rlm.core.strategy import HINTS, strategy
from tests.conftest import repl


def test_questions_about_every_record_get_the_labelling_strategy():
    for question in ("How many records have the label 'human'?",
                     "Which label is the most frequent among all records?",
                     "Is the label 'a' more common than 'b'?",
                     "List every pair of user IDs that share a label.",
                     "How many reviews have a positive sentiment?"):
        assert strategy(question) == "records", question
    # A count of what the records spell out is plain code: no labelling.
    assert strategy("How many log lines are at level WARN from the [auth] service?") is None
    # Without sub-calls there is no llm_map to label with: no hint.
    assert strategy("How many records have the label 'human'?", sub_calls=False) is None


def test_questions_that_hang_on_another_fact_get_two_steps():
    for question in ("In which city is the company that built the Orla Bridge based?",
                     "In which city was the founder of Voss Works born?",
                     "Who is the spouse of the founder of the company that built X?"):
        assert strategy(question) == "two-step", question


def test_a_plain_lookup_gets_no_hint():
    for question in ("What is the special magic number for Drailon mentioned in the text?",
                     "Which module defines the top-level function `create_archive`?",
                     None, ""):
        assert strategy(question) is None


def first_message(**kwargs) -> str:
    seen: list[str] = []

    def reply(messages, depth):
        seen.append(messages[1]["content"])
        return repl("FINAL('1')")

    RLM(backend="scripted", backend_kwargs={"responses": reply}, **kwargs).completion(
        "How many records have the label 'human'?", context="a\nb")
    return seen[0]


def test_only_the_small_profile_gets_the_hint():
    assert HINTS["records"] in first_message(prompt_profile="small")
    assert HINTS["records"] not in first_message()
    assert HINTS["records"] not in first_message(prompt_profile="small", sub_calls=False)
