"""The ``gemini`` backend: the ``google-genai`` SDK pointed at ``tests/fakes/gemini_server.py``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rlm import RLM
from rlm.backends.gemini_genai import GeminiBackend
from rlm.backends.prices import lookup
from rlm.errors import (
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
    BadResponseError,
    Cancelled,
    MissingKeyError,
    RateLimitError,
)
from rlm.types import CompletionRequest
from tests.conftest import repl
from tests.fakes.gemini_server import FakeGeminiServer

FLASH = lookup("gemini", "gemini-2.5-flash")
assert FLASH is not None


def ask(text: str = "What is 2+2?", **kwargs: Any) -> CompletionRequest:
    return CompletionRequest(messages=[{"role": "user", "content": text}], **kwargs)


@pytest.fixture
def fake() -> Iterator[FakeGeminiServer]:
    with FakeGeminiServer(reply="4") as server:
        yield server


@pytest.fixture
def gemini(fake: FakeGeminiServer) -> Iterator[Callable[..., GeminiBackend]]:
    made: list[GeminiBackend] = []

    def make(**kwargs: Any) -> GeminiBackend:
        kwargs.setdefault("model", "gemini-2.5-flash")
        kwargs.setdefault("api_key", "AIza-test-key")
        kwargs.setdefault("base_url", fake.base_url)
        kwargs.setdefault("backoff_s", 0.01)
        backend = GeminiBackend(**kwargs)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def test_system_instruction_roles_and_generation_config(fake, gemini):
    fake.enqueue("the answer END more")
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"}, {"role": "user", "content": "again"}]
    completion = gemini().complete(CompletionRequest(
        messages=messages, stop=["END"], max_output_tokens=40, temperature=0.0))
    assert completion.text == "the answer "
    [seen] = fake.requests
    assert seen.path.endswith("/models/gemini-2.5-flash:generateContent")
    assert seen.headers["x-goog-api-key"] == "AIza-test-key"
    assert seen.body["systemInstruction"]["parts"][0]["text"] == "Be terse."
    assert [c["role"] for c in seen.body["contents"]] == ["user", "model", "user"]
    config = seen.body["generationConfig"]
    assert (config["maxOutputTokens"], config["temperature"], config["stopSequences"]) == (
        40, 0.0, ["END"])


def test_usage_with_implicitly_cached_tokens_is_charged_at_the_cache_price(fake, gemini):
    backend = gemini()
    history = [{"role": "system", "content": "S" * 4000}, {"role": "user", "content": "q" * 400}]
    first = backend.complete(CompletionRequest(messages=history))
    assert (first.input_tokens, first.output_tokens, first.cached_input_tokens) == (1100, 1, 0)
    assert first.cost_usd == pytest.approx((1100 * FLASH.input + 1 * FLASH.output) / 1e6)
    history += [{"role": "assistant", "content": "a" * 40}, {"role": "user", "content": "r" * 40}]
    second = backend.complete(CompletionRequest(messages=history))
    assert (second.input_tokens, second.cached_input_tokens) == (1120, 1100)
    assert second.cost_usd == pytest.approx((1100 * FLASH.read_price + 20 * FLASH.input
                                             + 1 * FLASH.output) / 1e6)


@pytest.mark.parametrize("script", [{"blocked": "SAFETY"}, {"finish_reason": "SAFETY"},
                                    {"blocked": "PROHIBITED_CONTENT"}])
def test_safety_blocks_are_a_clear_error(fake, gemini, script):
    fake.enqueue(**script)
    with pytest.raises(BadResponseError, match="safety filters") as info:
        gemini().complete(ask())
    reason = script.get("blocked") or script["finish_reason"]
    assert reason in str(info.value)


def test_rate_limits_are_retried_after_retry_after(fake, gemini):
    fake.enqueue(status=429, headers={"retry-after": "0.3"})
    started = time.monotonic()
    assert gemini().complete(ask()).text == "4"
    assert time.monotonic() - started >= 0.3 and len(fake.requests) == 2
    fake.enqueue(status=429, times=4)
    with pytest.raises(RateLimitError):
        gemini(max_retries=3).complete(ask())
    assert len(fake.requests) == 2 + 4


def test_server_errors_are_retried_and_refusals_are_not(fake, gemini):
    fake.enqueue(status=503, times=2)
    assert gemini().complete(ask()).text == "4" and len(fake.requests) == 3
    fake.enqueue(status=400)
    with pytest.raises(BadResponseError) as info:
        gemini().complete(ask())
    assert info.value.status_code == 400 and len(fake.requests) == 4


def test_timeouts_and_dead_servers_map_to_backend_errors(fake, gemini):
    fake.enqueue(delay_s=5)
    started = time.monotonic()
    with pytest.raises(BackendTimeoutError):
        gemini(timeout_s=0.5).complete(ask())
    assert time.monotonic() - started < 4
    dead = GeminiBackend("gemini-2.5-flash", api_key="k", base_url="http://127.0.0.1:9",
                         max_retries=1, backoff_s=0.01)
    with pytest.raises(BackendConnectionError):
        dead.complete(ask())
    dead.close()


def test_a_cancel_ends_a_call_in_flight(fake, gemini):
    fake.enqueue(delay_s=30)
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        gemini().complete(ask(cancel=cancel))
    assert time.monotonic() - started < 3


def test_the_key_never_shows_in_an_error(fake, gemini):
    key = "AIza-very-secret-777"
    fake.enqueue(status=400, body={"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                             "message": f"API key {key} not valid"}})
    with pytest.raises(BackendError) as info:
        gemini(api_key=key).complete(ask())
    assert key not in str(info.value) and "***" in str(info.value)


def test_keys_come_from_either_variable(monkeypatch):
    with pytest.raises(MissingKeyError, match="GEMINI_API_KEY"):
        GeminiBackend("gemini-2.5-flash")
    monkeypatch.setenv("GOOGLE_API_KEY", "AIza-google")
    assert GeminiBackend("gemini-2.5-flash").secrets() == ["AIza-google"]
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-gemini")
    assert GeminiBackend("gemini-2.5-flash").secrets() == ["AIza-gemini"]


def test_impossible_usage_is_refused(fake, gemini):
    fake.enqueue(body={"candidates": [{"content": {"role": "model", "parts": [{"text": "x"}]},
                                       "finishReason": "STOP"}],
                       "usageMetadata": {"promptTokenCount": -3, "candidatesTokenCount": 1}})
    with pytest.raises(BadResponseError, match="impossible usage"):
        gemini().complete(ask())


def test_an_rlm_runs_on_gemini_within_its_budget(fake, tmp_path):
    replies = [repl("x = 20 + 22\nprint(x)"), repl("FINAL(x)")]
    fake.reply = lambda body: replies[min(len(fake.usages), 1)]
    fake.min_cache_tokens = 0  # the RLM system prompt is shorter than Gemini's minimum
    rlm = RLM(backend="gemini", backend_kwargs={
        "model": "gemini-2.5-flash", "api_key": "AIza-run", "base_url": fake.base_url},
        max_budget=0.5, trace=str(tmp_path / "run.jsonl"))
    result = rlm.completion("What is 20 + 22?")
    rlm.close()
    trace = (tmp_path / "run.jsonl").read_text()
    assert '"lm_call"' in trace and "AIza-run" not in trace  # the key never reaches a trace
    assert result.response == "42" and len(fake.usages) == 2
    assert fake.usages[1]["cachedContentTokenCount"] > 0  # turn 2 re-sends turn 1's prompt
    expected = sum(FLASH.cost(u["promptTokenCount"], u["candidatesTokenCount"],
                              cache_read_tokens=u["cachedContentTokenCount"])
                   for u in fake.usages)
    assert result.cost_usd == pytest.approx(expected)
