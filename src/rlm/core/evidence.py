"""Where an answer came from: the outputs that show it, or the code that computed it.

A small model sometimes answers with a literal it never saw (an invented harbour, a number
from nowhere).  The loop asks ``grounding`` before it accepts an answer: an answer is
grounded when it was computed (``FINAL(x)`` of a variable or an expression, ``FINAL_VAR``)
or when its words appear in an output the model was shown or in the question.  An answer
that is neither gets one verification turn (``rlm.core.loop``).  The evidence found is
``RLMResult.evidence`` and is recorded in the trace's ``final`` event.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

__all__ = ["Grounding", "Seen", "computed", "grounding"]

#: Characters of an output kept around the answer in an evidence excerpt.
EXCERPT_CHARS = 240

#: Answers that are judgements, not facts read from the input.
_JUDGEMENTS = {"yes", "no", "true", "false", "none", "unknown", "not found", "n/a"}
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_MINOR = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "in", "is", "it", "of", "on", "or",
    "the", "to", "was", "were", "with",
})


@dataclass(frozen=True)
class Seen:
    """An output the model was shown (``iteration`` is the turn that printed it)."""

    iteration: int
    text: str


@dataclass(frozen=True)
class Grounding:
    """Whether an answer is grounded, and the evidence for it."""

    grounded: bool
    evidence: tuple[dict[str, object], ...]


def computed(code: str) -> bool:
    """Whether the ``FINAL``/``FINAL_VAR`` call in ``code`` submits something computed (a
    variable, an expression) rather than a literal typed into the call."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Name) and node.func.id in ("FINAL", "FINAL_VAR")]
    if not calls:  # FINAL reached through a helper or a loop: the code computed it
        return True
    for call in calls:
        if call.func.id == "FINAL_VAR":  # type: ignore[attr-defined]
            return True
        if call.args and not _literal(call.args[0]):
            return True
    return False


def _literal(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.JoinedStr):
        return all(isinstance(part, ast.Constant) for part in node.values)
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return all(_literal(item) for item in node.elts)
    if isinstance(node, ast.Dict):
        return all(_literal(item) for item in [*node.keys, *node.values] if item is not None)
    if isinstance(node, ast.UnaryOp):
        return _literal(node.operand)
    return False


def _normal(text: str) -> str:
    return " ".join(text.lower().split()).strip(" \t\"'`.,;:!")


def _excerpt(text: str, start: int, end: int) -> str:
    half = max(0, (EXCERPT_CHARS - (end - start)) // 2)
    return text[max(0, start - half):end + half]


def grounding(answer: str, seen: list[Seen], *, question: str = "", code: str | None = None,
              iteration: int = 0) -> Grounding:
    """Is ``answer`` grounded in what the model saw (``seen``), the question, or code?

    ``code`` is the block that submitted it at turn ``iteration`` (``None`` for a
    ``FINAL(...)`` line read as prose).  The evidence lists each output holding the
    whole answer (or, for a longer answer, all of its words), latest first.
    """
    wanted = _normal(answer)
    evidence: list[dict[str, object]] = []
    if wanted:
        exact = re.compile(r"(?<!\w)" + re.escape(wanted) + r"(?!\w)")
        words = {w for w in _WORD.findall(wanted) if w not in _MINOR}
        for item in reversed(seen):
            lowered = item.text.lower()
            match = exact.search(" ".join(lowered.split()))
            if match is None:
                match = exact.search(lowered)
            if match is not None:
                evidence.append({"iteration": item.iteration, "kind": "output",
                                 "excerpt": _excerpt(" ".join(item.text.split()),
                                                     match.start(), match.end())})
            elif len(words) > 1 and words <= set(_WORD.findall(lowered)):
                first = min(lowered.find(w) for w in words)
                evidence.append({"iteration": item.iteration, "kind": "output",
                                 "excerpt": _excerpt(item.text, first, first + len(wanted))})
    was_computed = code is not None and computed(code)
    if was_computed:
        evidence.insert(0, {"iteration": iteration, "kind": "code",
                            "excerpt": code[-EXCERPT_CHARS:]})
    in_question = bool(wanted) and re.search(
        r"(?<!\w)" + re.escape(wanted) + r"(?!\w)", _normal(question)) is not None
    grounded = (was_computed or bool(evidence) or in_question or not wanted
                or wanted in _JUDGEMENTS)
    return Grounding(grounded, tuple(evidence[:5]))
