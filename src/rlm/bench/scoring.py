"""Scorers: turn a predicted answer and the gold answer (both strings) into a score in [0, 1].

- ``exact``: 1.0 when the normalised prediction equals the normalised answer, else 0.0.
- ``numeric``: the paper's partial credit for counts, ``0.75 ** |y - ŷ|`` where ``ŷ`` is the
  first number in the prediction (0.0 when it holds none).
- ``pairs_f1``: F1 between the set of pairs in the prediction and the gold set; pairs are
  unordered (``(7, 3)`` is ``(3, 7)``), written ``(a, b)`` anywhere in the text.

``normalize`` is what ``exact`` compares: lowercase, no surrounding quotes, backticks or
trailing punctuation, no ``answer:`` / ``final answer:`` prefix, no leading article, one space
between words.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

__all__ = [
    "SCORERS",
    "exact",
    "f1",
    "format_pairs",
    "normalize",
    "numeric",
    "pairs_f1",
    "parse_number",
    "parse_pairs",
    "score",
]

_PREFIX = re.compile(r"^(?:the\s+)?(?:final\s+)?answer\s*(?:is)?\s*[:=]?\s*", re.IGNORECASE)
_WRAPPER = re.compile(r"^FINAL(?:_VAR)?\((.*)\)$", re.DOTALL)
_STRIP = " \t\r\n\"'`.,;:!?*()[]{}"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_PAIR = re.compile(r"\(\s*([\w.-]+)\s*,\s*([\w.-]+)\s*\)")


def normalize(text: object) -> str:
    """The comparable form of an answer (see the module docstring)."""
    value = str(text).strip()
    wrapped = _WRAPPER.match(value)
    if wrapped:
        value = wrapped.group(1)
    value = value.strip(_STRIP)
    value = _PREFIX.sub("", value).strip(_STRIP)
    value = re.sub(r"^(?:the|a|an)\s+", "", value, flags=re.IGNORECASE)
    return " ".join(value.lower().split())


def exact(prediction: str, answer: str) -> float:
    """1.0 when both normalise to the same text, else 0.0."""
    return 1.0 if normalize(prediction) == normalize(answer) else 0.0


def parse_number(text: str) -> float | None:
    """The first number written in ``text`` (``1,234`` is 1234), or ``None``."""
    match = _NUMBER.search(str(text))
    if match is None:
        return None
    try:
        return float(match.group(0).replace(",", ""))
    except ValueError:
        return None


def numeric(prediction: str, answer: str) -> float:
    """``0.75 ** |answer - prediction|`` (OOLONG's partial credit); 0.0 without a number."""
    got, want = parse_number(prediction), parse_number(answer)
    if got is None or want is None:
        return 0.0
    return float(0.75 ** abs(want - got))


def parse_pairs(text: str) -> set[tuple[str, str]]:
    """Every ``(a, b)`` written in ``text``, as sorted tuples (pairs are unordered)."""
    pairs: set[tuple[str, str]] = set()
    for a, b in _PAIR.findall(str(text)):
        if a != b:
            pairs.add((a, b) if _key(a) <= _key(b) else (b, a))
    return pairs


def _key(value: str) -> tuple[int, float | str]:
    try:
        return (0, float(value))
    except ValueError:
        return (1, value)


def format_pairs(pairs: Iterable[tuple[object, object]]) -> str:
    """The canonical text of a set of pairs: ``(1, 2), (1, 5), (3, 4)`` (lower first)."""
    ordered = sorted(parse_pairs(", ".join(f"({a}, {b})" for a, b in pairs)),
                     key=lambda p: (_key(p[0]), _key(p[1])))
    return ", ".join(f"({a}, {b})" for a, b in ordered)


def f1(predicted: set[tuple[str, str]], gold: set[tuple[str, str]]) -> float:
    """F1 of two sets (1.0 when both are empty)."""
    if not predicted and not gold:
        return 1.0
    hits = len(predicted & gold)
    if hits == 0:
        return 0.0
    precision, recall = hits / len(predicted), hits / len(gold)
    return 2 * precision * recall / (precision + recall)


def pairs_f1(prediction: str, answer: str) -> float:
    """F1 between the pairs written in ``prediction`` and those in ``answer``."""
    return f1(parse_pairs(prediction), parse_pairs(answer))


SCORERS: dict[str, Callable[[str, str], float]] = {
    "exact": exact,
    "numeric": numeric,
    "pairs_f1": pairs_f1,
}


def score(scorer: str, prediction: str | None, answer: str) -> float:
    """Score ``prediction`` with the scorer named ``scorer`` (``None`` scores 0.0)."""
    if prediction is None:
        return 0.0
    return SCORERS[scorer](prediction, answer)
