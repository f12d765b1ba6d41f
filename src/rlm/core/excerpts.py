"""Cutting a long output so that what the code searched for stays in it.

Output fed back to the model is bounded (``LoopConfig.max_output_chars``, less on the
small profile).  Cutting to the head and the tail loses a match in the middle: a print of a
60,000-character line (a document without line breaks, a minified JSON file) shows its
start and its end, never the sentence that holds the needle.  ``keep_matches`` cuts around
the matches of the block's own search terms (the string literals of its code: words,
regular expressions) instead, and falls back to head and tail when nothing matches.
"""

from __future__ import annotations

import ast
import re

from rlm.trace.preview import head_and_tail

__all__ = ["keep_matches", "search_terms"]

#: At most this many windows around matches are shown.
MAX_WINDOWS = 6
_MIN_TERM, _MAX_TERM = 2, 120
_NOT_TERMS = {"\n", "\t", " ", ", ", "utf-8", "r", "w", "rb", "strict", "ignore", "replace"}


def search_terms(code: str) -> list[re.Pattern[str]]:
    """The string literals of ``code`` that may be what it searches for, as patterns.

    A literal that compiles as a regular expression is used as one (case-insensitive);
    any other is matched as plain text.
    """
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return []
    patterns: list[re.Pattern[str]] = []
    seen: set[str] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        text = node.value
        if (text in seen or text.strip() in _NOT_TERMS or not _MIN_TERM <= len(text) <= _MAX_TERM
                or not any(ch.isalnum() for ch in text)):
            continue
        seen.add(text)
        try:
            pattern = re.compile(text, re.IGNORECASE)
        except re.error:
            pattern = re.compile(re.escape(text), re.IGNORECASE)
        if pattern.search("") is None:  # a pattern matching everywhere shows nothing
            patterns.append(pattern)
    return patterns


def _spans(text: str, patterns: list[re.Pattern[str]]) -> list[tuple[int, int]]:
    found: list[tuple[int, int]] = []
    for pattern in patterns:
        for match in pattern.finditer(text):
            if match.end() > match.start():
                found.append(match.span())
            if len(found) >= 50 * MAX_WINDOWS:
                break
    return sorted(set(found))


def keep_matches(text: str, limit: int, patterns: list[re.Pattern[str]],
                 label: str = "output truncated") -> str:
    """``text`` cut to about ``limit`` characters around the matches of ``patterns``."""
    if len(text) <= limit:
        return text
    spans = _spans(text, patterns)
    if not spans:
        return head_and_tail(text, limit, label, "not shown")
    chosen: list[tuple[int, int]] = []
    for span in spans:  # spread over the output: the first match of each stretch
        if not chosen or span[0] - chosen[-1][1] > limit // MAX_WINDOWS:
            chosen.append(span)
        if len(chosen) == MAX_WINDOWS:
            break
    width = max(80, limit // len(chosen))
    windows: list[list[int]] = []
    for start, end in chosen:
        pad = max(0, (width - (end - start)) // 2)
        low, high = max(0, start - pad), min(len(text), end + pad)
        if windows and low <= windows[-1][1]:
            windows[-1][1] = high
        else:
            windows.append([low, high])
    parts = [f"[{label}: {len(text):,} characters, shown around {len(spans)} match(es) of "
             "the search]"]
    position = 0
    for low, high in windows:
        if low > position:
            parts.append(f"[... {low - position:,} characters not shown ...]")
        parts.append(text[low:high])
        position = high
    if position < len(text):
        parts.append(f"[... {len(text) - position:,} characters not shown ...]")
    return "\n".join(parts)
