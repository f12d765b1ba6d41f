"""Fixtures for backend tests: a fake OpenAI-compatible server and backends pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

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
