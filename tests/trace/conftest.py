"""Fixtures for the console view: rich consoles writing to a string, and a nested run."""

from __future__ import annotations

import io
import re
from collections.abc import Callable

import pytest
from rich.console import Console

from rlm.types import Message
from tests.conftest import repl

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Screen:
    """A rich ``Console`` writing to memory; ``text()`` is what was shown, escapes removed."""

    def __init__(self, *, terminal: bool) -> None:
        self.buffer = io.StringIO()
        self.console = Console(file=self.buffer, force_terminal=terminal, width=140,
                               color_system="standard" if terminal else None)

    def text(self) -> str:
        return _ANSI.sub("", self.buffer.getvalue())


@pytest.fixture
def screen() -> Callable[..., Screen]:
    return Screen


def _said(messages: list[Message], text: str) -> bool:
    return any(text in m["content"] for m in messages)


@pytest.fixture
def nested_replies() -> Callable[[list[Message], int], str]:
    """Replies for ``max_depth=2``: the root spawns one child RLM and batches 3 ``llm_query``.

    The child fails once (ZeroDivisionError), then answers ``"child answer xyz"``; the root
    answers ``"root done: child answer xyz"``.
    """

    def reply(messages: list[Message], depth: int) -> str:
        if depth == 0:
            if _said(messages, "child says"):
                return repl("FINAL('root done: ' + r)")
            return repl("r = rlm_query('what is inside?', context='xyz')\n"
                        "print('child says', r)\n"
                        "parts = llm_query_batched(['a', 'b', 'c'])")
        if _said(messages, "what is inside?"):
            if _said(messages, "ZeroDivisionError"):
                return repl("FINAL('child answer ' + context)")
            return repl("1/0")
        return "plain sub-call reply"

    return reply
