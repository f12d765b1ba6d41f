"""The shared rate limiter in the SDK backends (anthropic, gemini), each through its SDK
against its local fake: rpm spaces the calls, a 429 pauses every caller once."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from rlm.backends.anthropic_messages import AnthropicBackend
from rlm.backends.gemini_genai import GeminiBackend
from rlm.types import CompletionRequest
from tests.fakes.anthropic_server import FakeAnthropicServer
from tests.fakes.gemini_server import FakeGeminiServer

SDKS: dict[str, tuple[Callable[..., Any], Callable[..., Any], dict[str, Any]]] = {
    "anthropic": (FakeAnthropicServer, AnthropicBackend,
                  {"model": "claude-sonnet-4", "api_key": "sk-ant-test-key"}),
    "gemini": (FakeGeminiServer, GeminiBackend,
               {"model": "gemini-2.5-flash", "api_key": "AIza-test-key"}),
}


def ask(text: str) -> CompletionRequest:
    return CompletionRequest(messages=[{"role": "user", "content": text}],
                             max_output_tokens=16)


def _together(backend: Any, count: int) -> None:
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            backend.complete(ask(f"question {i}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors


@pytest.mark.parametrize("sdk", list(SDKS))
def test_rpm_spaces_concurrent_calls(sdk):
    server, backend_class, kwargs = SDKS[sdk]
    with server(reply="ok") as fake:
        backend = backend_class(base_url=fake.base_url, rpm=600, **kwargs)  # one per 0.1 s
        try:
            _together(backend, 5)
        finally:
            backend.close()
        times = sorted(r.received_at for r in fake.requests)
    assert len(times) == 5
    # turns 0.1 s apart (the SDK's own overhead blurs each gap a little, not the span)
    assert times[-1] - times[0] >= 0.35
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.04


@pytest.mark.parametrize("sdk", list(SDKS))
def test_a_429_pauses_every_caller_once(sdk):
    server, backend_class, kwargs = SDKS[sdk]
    with server(reply="ok") as fake:
        fake.enqueue(status=429, headers={"retry-after": "0.8"})
        backend = backend_class(base_url=fake.base_url, backoff_s=30.0, **kwargs)
        try:
            first = threading.Thread(target=backend.complete, args=(ask("first"),))
            first.start()
            while backend.limiter.pauses == 0:
                time.sleep(0.005)
            paused_at = time.time()
            _together(backend, 4)  # started during the pause: they wait it out
            first.join(10)
            assert backend.limiter.pauses == 1
        finally:
            backend.close()
        times = sorted(r.received_at for r in fake.requests)
    assert len(times) == 6
    assert all(t >= paused_at + 0.7 for t in times[1:])
