"""Reading a model reply: fenced code blocks and ``FINAL(...)`` lines written outside code."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

__all__ = ["CODE_LANGUAGES", "CodeBlock", "find_code_blocks", "find_final_line", "strip_code"]

#: Fence languages run as code.  Small models write ```python even when told ```repl.
CODE_LANGUAGES = frozenset({"repl", "python", "python3", "py", ""})

_OPEN = re.compile(r"^(?P<indent>[ \t]{0,3})(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+-]*)[^\n`]*$")
_FINAL_LINE = re.compile(r"^\s*(?P<kind>FINAL_VAR|FINAL)\((?P<inner>.*)\)\s*$")
#: An HTML comment (hidden when the reply is rendered); an unclosed one runs to the end.
_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)


@dataclass(frozen=True)
class CodeBlock:
    """A fenced block: its language tag, its code and the reply lines it spans."""

    language: str
    code: str
    start_line: int
    end_line: int


def _compiles(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def _fences(text: str) -> list[CodeBlock]:
    """Every fenced block, whatever its language."""
    return _scan(text, keep_all=True)


def find_code_blocks(text: str) -> list[CodeBlock]:
    """Every fenced block whose language is in ``CODE_LANGUAGES``, in order.

    A closing fence is a line of only backticks (at least as many as the opening fence).
    When several lines could close a block, the first one after which the code parses is
    chosen, so a fence inside a string literal does not cut the block short.  An
    unlabelled block is kept only when it parses as Python.
    """
    return _scan(text, keep_all=False)


def _scan(text: str, *, keep_all: bool) -> list[CodeBlock]:
    lines = text.split("\n")
    blocks: list[CodeBlock] = []
    i = 0
    while i < len(lines):
        match = _OPEN.match(lines[i])
        if not match:
            i += 1
            continue
        fence = match["fence"]
        lang = match["lang"].lower()
        closers = [
            j for j in range(i + 1, len(lines))
            if lines[j].strip() and set(lines[j].strip()) == {fence[0]}
            and len(lines[j].strip()) >= len(fence)
        ]
        if not closers:  # an unclosed fence runs to the end of the reply
            closers = [len(lines)]
        end = next((j for j in closers if _compiles("\n".join(lines[i + 1:j]))), closers[0])
        code = "\n".join(lines[i + 1:end])
        if keep_all or (lang in CODE_LANGUAGES and (lang or _compiles(code)) and code.strip()):
            blocks.append(CodeBlock(lang, code, i, end))
        i = end + 1
    return blocks


def strip_code(text: str, blocks: list[CodeBlock] | None = None) -> str:
    """The reply without its fenced blocks (its prose)."""
    lines = text.split("\n")
    blocks = find_code_blocks(text) if blocks is None else blocks
    skip = {n for b in blocks for n in range(b.start_line, b.end_line + 1)}
    return "\n".join(line for n, line in enumerate(lines) if n not in skip)


def find_final_line(text: str) -> tuple[str, str] | None:
    """A ``FINAL(...)`` or ``FINAL_VAR(...)`` standing alone on a line outside code.

    Returns ``(kind, inner_text)`` or ``None``.  Lines inside any fenced block (code or
    not) and inside HTML comments (``<!-- ... -->``, hidden when the reply is rendered)
    are ignored; only a line that is nothing but the call counts, and the parentheses
    must balance, so prose that mentions the protocol ("I will call FINAL(answer) once I
    know it") never fires.  The loop runs the line as a code block (see
    ``rlm.core.loop``); the inner text is the answer when that fails.
    """
    prose = _HTML_COMMENT.sub(lambda m: "\n" * m.group().count("\n"),
                              strip_code(text, _fences(text)))
    found = None
    for line in prose.split("\n"):
        match = _FINAL_LINE.match(line)
        if match and _balanced(match["inner"]):
            found = (match["kind"], match["inner"].strip())
    return found


def _balanced(inner: str) -> bool:
    depth = 0
    for char in inner:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0
