"""Fixtures for backend tests: a fake OpenAI-compatible server and backends pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rlm.backends import openai_compat
from rlm.backends.openai_compat import OpenAIBackend
from tests.fakes.openai_server import FakeOpenAIServer


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAIServer]:
    """A running ``FakeOpenAIServer`` on 127.0.0.1, stopped after the test."""
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def openai_backend(fake_openai: FakeOpenAIServer) -> Iterator[Callable[..., OpenAIBackend]]:
    """Build ``OpenAIBackend``s aimed at the fake server (fast backoff); closed afterwards."""
    made: list[OpenAIBackend] = []

    def make(**kwargs: Any) -> OpenAIBackend:
        kwargs.setdefault("model", "fake")
        kwargs.setdefault("base_url", fake_openai.url)
        kwargs.setdefault("backoff_s", 0.01)
        backend = OpenAIBackend(**kwargs)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


#: Keys and endpoints of the services added after ``tests/conftest.py``'s list.
MORE_PROVIDER_VARS = ("TOGETHER_API_KEY", "DEEPSEEK_API_KEY", "FIREWORKS_API_KEY",
                      "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT", "GEMINI_API_KEY",
                      "GOOGLE_API_KEY", "ANTHROPIC_BASE_URL", "GOOGLE_GEMINI_BASE_URL")


@pytest.fixture(autouse=True)
def clean_more_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No backend test sees a real key or endpoint of these services either."""
    for name in MORE_PROVIDER_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def remote_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Treat 127.0.0.1 as a remote host, to test keys and prices against the fake server."""
    monkeypatch.setattr(openai_compat, "LOCAL_HOSTS", frozenset())
