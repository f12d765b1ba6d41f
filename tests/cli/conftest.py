"""Fixtures for CLI tests: a click runner and scripted-reply files for ``--script``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner


@pytest.fixture
def cli_runner() -> CliRunner:
    """Runs ``rlm`` commands in-process; ``result.stdout`` and ``result.stderr`` are apart."""
    return CliRunner()


@pytest.fixture
def script(tmp_path: Path) -> Callable[..., Path]:
    """Write replies for ``rlm run --script FILE``: ``script(repl("FINAL(1)"), ...)``."""
    count = 0

    def write(*replies: str) -> Path:
        nonlocal count
        count += 1
        path = tmp_path / f"script-{count}.json"
        path.write_text(json.dumps(list(replies)), encoding="utf-8")
        return path

    return write


@pytest.fixture
def traces_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Default traces go under a private RLM_USER_PATH."""
    home = tmp_path / "user"
    monkeypatch.setenv("RLM_USER_PATH", str(home))
    monkeypatch.delenv("RLM_DEBUG", raising=False)
    return home
