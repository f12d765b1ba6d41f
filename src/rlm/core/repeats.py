"""Blocks a node already ran: a block (nearly) identical to one that found nothing is not
run again, and the model gets a concrete different next step instead.

Small models repeat themselves: after a search that printed nothing they often write the
same search again, turn after turn, until the iterations run out.  ``BlockMemory`` keeps a
normalised form of every block a node ran (its syntax tree, so spacing and comments do not
matter) and whether it found anything; ``repeat_of`` names the fruitless block a new one
repeats.  ``probe_code`` is what the loop runs instead: it counts, in ``context``, each
distinctive word of the question, so the model learns which words occur at all.
"""

from __future__ import annotations

import ast
import difflib
import re
from dataclasses import dataclass

__all__ = ["BlockMemory", "found_nothing", "probe_code", "question_words"]

#: Two blocks at least this similar (``difflib`` ratio of their normalised text) are one.
SIMILARITY = 0.9

#: Output that says nothing was found.
NOTHING = {"", "0", "[]", "{}", "()", "None", "set()", "''", '""', "False", "-1"}

_STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "did", "do", "does", "for", "from", "has",
    "have", "how", "in", "is", "it", "its", "of", "on", "or", "that", "the", "this", "to",
    "was", "were", "what", "when", "where", "which", "who", "whom", "whose", "why", "with",
    "name", "answer", "question", "context", "text", "only", "number", "many", "much", "give",
    "find", "tell", "list", "all", "any", "each", "there", "their", "they", "them",
})


def found_nothing(stdout: str, error: str | None) -> bool:
    """Whether a block's output shows nothing found: an error, no output, or an empty value
    on every printed line."""
    if error:
        return True
    lines = [line.strip() for line in stdout.strip().splitlines()]
    return all(line in NOTHING for line in lines)


def _shape(code: str) -> tuple[str, tuple[str, ...], bool]:
    """The block's syntax tree, its constants, and whether it submits an answer."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return " ".join(code.split()), (), False
    constants = sorted(repr(node.value) for node in ast.walk(tree)
                       if isinstance(node, ast.Constant))
    submits = any(isinstance(node, ast.Name) and node.id in ("FINAL", "FINAL_VAR")
                  for node in ast.walk(tree))
    return ast.dump(tree, annotate_fields=False), tuple(constants), submits


@dataclass
class _Ran:
    code: str
    shape: str
    constants: tuple[str, ...]
    fruitless: bool


class BlockMemory:
    """The blocks one node ran, in order."""

    def __init__(self) -> None:
        self._ran: list[_Ran] = []
        #: How many blocks were refused as repeats.
        self.repeats = 0

    def record(self, code: str, fruitless: bool) -> None:
        shape, constants, _submits = _shape(code)
        self._ran.append(_Ran(code, shape, constants, fruitless))

    def repeat_of(self, code: str) -> int | None:
        """The number (from 1) of an earlier fruitless block that ``code`` repeats, if any.

        A repeat has the same syntax tree, or the same constants (the words and patterns
        it searches for) in a nearly identical tree.  A block that submits an answer is
        never a repeat: whether it works depends on the variables, which may have changed.
        """
        shape, constants, submits = _shape(code)
        if submits:
            return None
        for number, ran in enumerate(self._ran, 1):
            if not ran.fruitless:
                continue
            if ran.shape == shape or (ran.constants == constants and difflib.SequenceMatcher(
                    None, ran.shape, shape, autojunk=False).ratio() >= SIMILARITY):
                return number
        return None


def question_words(question: str, limit: int = 8) -> list[str]:
    """The distinctive words of ``question``: no stop words, longest and capitalised first."""
    words: list[str] = []
    for word in re.findall(r"[A-Za-z0-9][\w'-]*[A-Za-z0-9]|\d", question):
        if word.lower() in _STOPWORDS or word in words:
            continue
        words.append(word)
    words.sort(key=lambda w: (not w[0].isupper() and not w[0].isdigit(), -len(w)))
    return words[:limit]


def probe_code(words: list[str]) -> str:
    """Code that prints how often each of ``words`` occurs in ``context`` (case-insensitive,
    whole words), and a window around the first match of the rarest one that occurs."""
    return (
        "import re as _re\n"
        "_text = context if isinstance(context, str) else str(context)\n"
        f"_counts = {{w: len(_re.findall(r'(?i)\\b' + _re.escape(w) + r'\\b', _text)) "
        f"for w in {words!r}}}\n"
        "print('occurrences in context:', _counts)\n"
        "_found = sorted((n, w) for w, n in _counts.items() if n)\n"
        "if _found:\n"
        "    _m = _re.search(r'(?i)\\b' + _re.escape(_found[0][1]) + r'\\b', _text)\n"
        "    print(repr(_found[0][1]), 'first occurs in:', "
        "_text[max(0, _m.start() - 300):_m.end() + 300])\n"
        "del _text, _counts, _found\n"
    )
