"""A scripted "perfect model" for the benchmark harness: it plays every method."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from rlm.bench.tasks import Instance
from rlm.types import Message

_NEEDLE = re.compile(r"The special magic number for (\w+) is: (\d+)\.")
_KEY = re.compile(r"special magic number for (\w+) mentioned")


def _niah_from(text: str, question: str) -> str | None:
    key = _KEY.search(question)
    if key is None:
        return None
    for found in _NEEDLE.finditer(text):
        if found.group(1) == key.group(1):
            return found.group(2)
    return "unknown"


def oracle(instances: Iterable[Instance]) -> Callable[[list[Message], int], str]:
    """A reply function that answers like a perfect model.

    S-NIAH is answered honestly from what the call can see: RLM turns search ``context``
    with code, one-shot calls search their prompt, summaries keep the needle sentence.
    Other tasks get the gold answer (looked up by question) in the expected form.
    """
    gold = {i.question: i.answer for i in instances}

    def question_in(text: str) -> str | None:
        return next((q for q in gold if q in text), None)

    def reply(messages: list[Message], depth: int) -> str:
        text = "\n".join(m["content"] for m in messages)
        question = question_in(text)
        if messages[0]["role"] == "system":  # an RLM turn: answer with code
            if question is None:
                return '```repl\nFINAL("no question")\n```'
            if _KEY.search(question):
                key = _KEY.search(question).group(1)
                return ("```repl\nimport re\nm = re.search(r'magic number for " + key +
                        r" is: (\d+)', context)" + "\nFINAL(m.group(1) if m else 'none')\n```")
            return f"```repl\nFINAL({gold[question]!r})\n```"
        if question is None:
            return "no idea"
        if "Rewrite the notes" in text:  # summarize: keep the needle sentence if seen
            notes = text.split("Notes so far:\n", 1)[1].split("\n\nPart ", 1)[0]
            found = _NEEDLE.search(text.split("<text>", 1)[1])
            return (notes + "\n" + found.group(0)) if found else notes
        niah = _niah_from(text, question)
        return niah if niah is not None else gold[question]

    return reply
