"""Fixtures: rich consoles writing to a string, a nested run, and a headless browser."""

from __future__ import annotations

import io
import os
import re
import shutil
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


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium (Debian's ``chromium``) driven by Playwright; skipped when absent
    locally, a failure under CI (``CI`` set), which must run the browser tests."""
    def missing(reason: str) -> None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        missing("chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable,
                                              args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh tab; the test fails on any JavaScript error the page raises."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert not errors, errors
