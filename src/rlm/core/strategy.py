"""Choosing a strategy from the question's wording, for small models.

A capable model picks its own approach; a model of one or two billion parameters copies the
first worked example it sees (a search) whatever the question.  On the small profile the
first user message therefore names the strategy the question calls for, when its wording
shows one: a question about every record (how many, most common, which ones, pairs) whose
answer hangs on a label the records do not spell out is answered by labelling the records
with ``llm_map`` and counting in code (a count of what is written is plain code); a question whose
answer hangs on another fact (the city of the company that built X) is answered in two
searches.  Other questions get no hint (a plain search).

When the question lists its labels ("one of these labels: a (...), b (...)") and the
records are lines, the labelling is a block that needs no filling in, and the engine runs
it before the first turn (``Plan.opening``; the model sees its code and output): a model
of 1.5B parameters told to run such a block still wrote a search for a label's name nine
times over.  The labels become the ``Literal``, the list that gives them the instruction,
and when every line holds the same fields (``Date: ... || User: ... || Text: ...``) only
the field with the most varied text is labelled (the text to judge, not the dates and IDs
around it).  One record per call: the 1.5B model labels 87 of 96 records right that way,
30 of 96 four to a call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["HINTS", "Plan", "label_set", "plan", "record_field", "strategy"]

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


_LISTED = re.compile(r"\b(?:labels?|categories|classes|one of)\b[^.:]{0,40}:\s*", re.IGNORECASE)
_SEPARATORS = (" || ", " | ", "\t", ";", ",")


def _without_parentheses(text: str) -> str:
    out, depth = [], 0
    for char in text:
        depth += char == "("
        if not depth:
            out.append(char)
        depth -= char == ")" and depth > 0
    return "".join(out)


def label_set(question: str) -> tuple[str, tuple[str, ...]] | None:
    """The list of labels ``question`` gives (as written, with any definitions) and the
    labels alone, if it gives one."""
    found = _LISTED.search(question)
    if found is None:
        return None
    rest, depth, end = question[found.end():], 0, None
    for i, char in enumerate(rest):  # the list ends at the first full stop outside (...)
        depth += (char == "(") - (char == ")")
        if char == "." and depth <= 0 and (i + 1 == len(rest) or rest[i + 1] in " \n"):
            end = i
            break
    listed = rest[:end]
    parts = re.split(r",|\bor\b|\band\b", _without_parentheses(listed))
    labels = tuple(dict.fromkeys(p.strip(" '\"`") for p in parts if p.strip(" '\"`")))
    if len(labels) < 2 or any(len(label.split()) > 3 for label in labels):
        return None
    return listed.strip(), labels


def record_field(lines: list[str]) -> tuple[str, int] | None:
    """``(separator, index)`` of the field to label when the lines hold the same fields."""
    sample = [line for line in lines[:200] if line.strip()]
    if len(sample) < 5:
        return None
    for sep in _SEPARATORS:
        widths = [line.count(sep) for line in sample]
        if widths[0] and widths.count(widths[0]) >= 0.9 * len(sample):
            fields = [line.split(sep) for line in sample if line.count(sep) == widths[0]]
            variety = [len({row[k] for row in fields}) * sum(len(row[k]) for row in fields)
                       for k in range(widths[0] + 1)]
            return sep, variety.index(max(variety))
    return None


@dataclass(frozen=True)
class Plan:
    """A strategy for one question: ``hint`` for the first user message and, when the
    engine takes the first step itself, the ``opening`` code it runs before the first turn
    and the ``note`` (with ``{output}``, what the code, then ``summary``, printed) that
    ends that message."""

    name: str
    hint: str
    opening: str | None = None
    note: str = "{output}"
    #: Code run after ``opening`` (even when it failed) whose output fills the note.
    summary: str | None = None


OPENING_HINT = (
    "Hint: this question is about every record, so before your first turn the records "
    "were labelled with llm_map, one call per record (searching for a label's name finds "
    "only the records that happen to contain that word).")
#: Records labelled per ``llm_map`` call of the opening block.
LABEL_CHUNK = 64


def labelled(labels: tuple[str, ...]) -> str:
    """What the engine prints after the opening block, whether it finished or not: how
    many records were labelled and the records per label, most to least (every label,
    none left out for a count of 0: a small model misreads a ``Counter``'s order)."""
    return (f"_counts = {{label: labels.count(label) for label in {labels!r}}}\n"
            'print(f"{len(labels)} of {len(lines)} records labelled. Records per label, most '
            'to least: " + ", ".join(f"{k}: {v}" for k, v in sorted(_counts.items(), '
            'key=lambda kv: -kv[1])))\n')
#: The code itself is not shown: a small model copies the last block it saw, and would
#: label every record again.
OPENING_NOTE = (
    "These variables are in the REPL: `lines` (the records, one per line) and `labels` "
    "(labels[i] is the label of lines[i]):\n{output}\n\nDo not label again. Write a "
    "```repl block that answers the question from `lines` and `labels`, then call FINAL. "
    "Counter(labels) counts the labels of all records; to count only the records whose "
    "line contains some text, use Counter(label for line, label in zip(lines, labels) if "
    "\"some text\" in line).")


def labelling_block(listed: tuple[str, tuple[str, ...]], context: object) -> str | None:
    """The block that labels every record of ``context`` with the labels ``label_set``
    found, when the records are lines.  It labels in chunks, so a block stopped by the
    time limit leaves the labels it has."""
    lines = context.split("\n") if isinstance(context, str) else []
    if len([line for line in lines if line.strip()]) < 2:
        return None
    written, labels = listed
    where = record_field(lines)
    pick = "items = lines\n" if where is None else (
        f"items = [line.split({where[0]!r})[{where[1]}].split(\": \", 1)[-1] for line in "
        "lines]  # the part of each record to label\n")
    instruction = f"Which label fits this text? The labels: {written}."
    return ("from collections import Counter\n"
            "lines = [line for line in context.split(\"\\n\") if line.strip()]\n"
            f"{pick}"
            "labels = []\n"
            f"for start in range(0, len(items), {LABEL_CHUNK}):\n"
            f"    labels += llm_map({instruction!r}, items[start:start + {LABEL_CHUNK}], "
            f"schema=Literal[{', '.join(repr(label) for label in labels)}], per_call=1)\n")


def strategy(question: str | None, *, sub_calls: bool = True) -> str | None:
    """``"records"``, ``"two-step"`` or ``None`` (a plain search) for ``question``."""
    if not question:
        return None
    if _TWO_STEP.search(question):
        return "two-step"
    if sub_calls and _RECORDS.search(question) and _INFERRED.search(question):
        return "records"
    return None


def plan(question: str | None, context: object = None, *, sub_calls: bool = True
         ) -> Plan | None:
    """The strategy for ``question`` over ``context``, if its wording calls for one."""
    chosen = strategy(question, sub_calls=sub_calls)
    if chosen == "records" and question:
        listed = label_set(question)
        opening = None if listed is None else labelling_block(listed, context)
        if listed is not None and opening is not None:
            return Plan(chosen, OPENING_HINT, opening, OPENING_NOTE, labelled(listed[1]))
    return None if chosen is None else Plan(chosen, HINTS[chosen])
