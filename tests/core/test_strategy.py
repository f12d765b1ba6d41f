"""The small profile names a strategy when the question's wording calls for one."""

from __future__ import annotations

import re

from rlm import RLM
from rlm.core.strategy import HINTS, label_set, record_field, strategy
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


# -- the labelling block the engine runs itself ------------------------------------------------
QUESTION = ("Every record has exactly one of these labels: fruit (a plant's sweet part), "
            "tool (a thing used for work), animal (a living creature). The label is not "
            "written. How many records have the label 'tool'? Answer with a number only.")
RECORDS = "\n".join(f"Day: {d} || User: {u} || Text: {t}" for d, u, t in (
    (1, 11, "a hammer"), (2, 12, "an apple"), (3, 11, "a saw"), (4, 13, "a heron"),
    (5, 12, "a chisel"), (6, 14, "a pear"))) + "\n"


def test_the_labels_and_the_field_to_label_are_read_from_question_and_records():
    written, labels = label_set(QUESTION)
    assert labels == ("fruit", "tool", "animal")
    assert written.startswith("fruit (a plant's sweet part)") and written.endswith("creature)")
    assert label_set("Label each record as 'a' or 'b'.") is None  # no list: nothing to fill
    assert record_field(RECORDS.splitlines()) == (" || ", 2)  # the varied text, not the IDs
    assert record_field(["one line", "and another"]) is None


def test_a_listed_label_set_makes_the_engine_label_every_record_before_turn_one():
    firsts: list[str] = []
    labelled: list[str] = []

    def reply(messages, depth):
        if depth:  # the sub-model: one record a call, its text only
            text = re.search(r"^1\. (.*)$", messages[-1]["content"], re.M).group(1)
            labelled.append(text)
            kind = "tool" if text.split()[-1] in ("hammer", "saw", "chisel") \
                else "animal" if "heron" in text else "fruit"
            return f'["{kind}"]'
        firsts.append(messages[1]["content"])
        return repl("FINAL(str(sum(1 for label in labels if label == 'tool')))")

    result = RLM(backend="scripted", backend_kwargs={"responses": reply},
                 prompt_profile="small").completion(QUESTION, context=RECORDS)
    assert result.response == "3"
    assert len(labelled) == 6 and "a hammer" in labelled[0] and "User" not in labelled[0]
    assert "before your first turn" in firsts[0]
    assert "6 of 6 records labelled. Records per label, most to least: tool: 3, fruit: 2, " \
        "animal: 1" in firsts[0]
    assert "llm_map(" not in firsts[0]  # not its code: a small model would run it again
    ran = [e.data["code"] for e in result.trace.code_executions]
    assert "llm_map(" in ran[0] and "per_call=1" in ran[0] and "_counts" in ran[1]
    # the default profile leaves the strategy to the model
    plain = RLM(backend="scripted", backend_kwargs={"responses": [repl("FINAL('0')")]})
    assert plain.completion(QUESTION, context=RECORDS).trace.code_executions[0].data[
        "code"].startswith("FINAL")
