"""Choosing a strategy from the question's wording, for small models.

A capable model picks its own approach; a model of one or two billion parameters copies the
first worked example it sees (a search) whatever the question.  On the small profile the
first user message therefore names the strategy the question calls for, when its wording
shows one: a question about every record (how many, most common, which ones, pairs) whose
answer hangs on a label the records do not spell out is answered by labelling the records
with ``llm_map`` and counting in code (a count of what is written is plain code); a question whose
answer hangs on another fact (the city of the company that built X) is answered in two
searches.  Other questions get no hint (a plain search).
"""

from __future__ import annotations

import re

__all__ = ["HINTS", "strategy", "strategy_hint"]

_RECORDS = re.compile(
    r"\b(how many|count|number of|most common|least common|more common|less common|"
    r"most frequent|least frequent|which users|list (?:all|every)|every pair|pairs? of)\b",
    re.IGNORECASE)
#: A question about every record needs its records labelled only when what it counts is
#: not written in them: a label, a category, a sentiment, something to infer.
_INFERRED = re.compile(r"\b(label|labels|labelled|category|categories|classif\w*|infer\w*|"
                       r"sentiment|topic|kind of|type of)\b", re.IGNORECASE)
_TWO_STEP = re.compile(
    r"\bthe (?:\w+ ){1,3}(?:that|which|who|whose) (?!is\b|are\b)\w+|"
    r"\bof the (?:\w+ ){1,2}of the\b|\b(?:was|is|were|are) the \w+ of\b", re.IGNORECASE)

HINTS = {
    "records": (
        "Hint: this question is about every record, so label each record with llm_map "
        "(searching for a label's name finds only the records that happen to contain that "
        "word). Start with this block, filled in:\n"
        "```python\n"
        "from collections import Counter\n"
        "lines = [line for line in context.split(\"\\n\") if line.strip()]\n"
        "labels = llm_map(\"<what to decide for each record>\", lines, "
        "schema=Literal[<the possible labels>])\n"
        "print(Counter(labels))\n"
        "```\n"
        "then count or filter in code: labels[i] is the label of lines[i]."),
    "two-step": (
        "Hint: this question has steps. First find the thing the question starts from and "
        "read in the output the name it leads to; then search for that name. The answer is "
        "what the question asks for at the end, not the first name found. For example, for "
        "'In which city is the company that built the Orla Bridge based?': search "
        "\"Orla Bridge\", read 'built by Voss Works', search \"Voss Works\", read 'based in "
        "Tarn', answer Tarn."),
}


def strategy(question: str | None, *, sub_calls: bool = True) -> str | None:
    """``"records"``, ``"two-step"`` or ``None`` (a plain search) for ``question``."""
    if not question:
        return None
    if _TWO_STEP.search(question):
        return "two-step"
    if sub_calls and _RECORDS.search(question) and _INFERRED.search(question):
        return "records"
    return None


def strategy_hint(question: str | None, *, sub_calls: bool = True) -> str | None:
    """The hint for the first user message, if the question's wording calls for one."""
    chosen = strategy(question, sub_calls=sub_calls)
    return None if chosen is None else HINTS[chosen]
