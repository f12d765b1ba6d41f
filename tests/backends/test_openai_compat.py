"""The OpenAI-compatible backend against a fake server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest

from rlm import RLM
from rlm.backends import openai_compat, prices
from rlm.backends.openai_compat import OpenAIBackend
from rlm.backends.prices import Price
from rlm.errors import (
    BackendConnectionError,
    BackendTimeoutError,
    BadResponseError,
    Cancelled,
    ConfigError,
    MissingKeyError,
    RateLimitError,
)
from rlm.types import CompletionRequest
from tests.conftest import repl
from tests.fakes.openai_server import FakeOpenAIServer


def ask(text: str = "What is 2+2?", **kwargs) -> CompletionRequest:
    return CompletionRequest(messages=[{"role": "user", "content": text}], **kwargs)


# -- completions and usage --------------------------------------------------------------------
def test_chat_completion_parses_text_and_usage(fake_openai, openai_backend):
    fake_openai.enqueue("4", usage=(11, 7))
    backend = openai_backend(model="my-model")
    completion = backend.complete(ask(max_output_tokens=50, temperature=0.2, stop=["END"]))
    assert (completion.text, completion.input_tokens, completion.output_tokens) == ("4", 11, 7)
    assert completion.model == "my-model" and completion.latency_s > 0
    assert completion.cost_usd == 0.0  # a localhost server is free
    [seen] = fake_openai.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.body == {"model": "my-model", "messages": ask().messages, "max_tokens": 50,
                         "temperature": 0.2, "stop": ["END"]}


def test_optional_fields_are_left_out_and_extras_merged(fake_openai, openai_backend):
    backend = openai_backend(extra_body={"top_p": 0.5}, headers={"X-Title": "rlm-tests"})
    backend.complete(ask())
    [seen] = fake_openai.requests
    assert seen.body == {"model": "fake", "messages": ask().messages, "top_p": 0.5}
    assert seen.headers["x-title"] == "rlm-tests"
    assert "authorization" not in seen.headers  # no key on localhost, none sent


def test_missing_usage_is_estimated(fake_openai, openai_backend):
    fake_openai.enqueue("x" * 40, usage=False)
    completion = openai_backend().complete(ask("y" * 400))
    assert (completion.input_tokens, completion.output_tokens) == (100, 10)


def test_null_content_is_empty_text(fake_openai, openai_backend):
    body = {"choices": [{"message": {"role": "assistant", "content": None}}]}
    fake_openai.enqueue(body=body)
    assert openai_backend().complete(ask()).text == ""


def test_error_object_in_a_200_is_bad_response(fake_openai, openai_backend):
    fake_openai.enqueue(body={"error": {"message": "upstream overloaded", "code": 502}})
    with pytest.raises(BadResponseError, match="HTTP 200 for model 'fake': upstream overloaded"):
        openai_backend().complete(ask())


@pytest.mark.parametrize("body", ["not json", {"choices": []}, {"choices": [{"message": 3}]}])
def test_malformed_response_is_bad_response(fake_openai, openai_backend, body):
    fake_openai.enqueue(body=body)
    with pytest.raises(BadResponseError, match="malformed response"):
        openai_backend().complete(ask())


# -- prices -----------------------------------------------------------------------------------
def test_cost_from_the_price_table(fake_openai, openai_backend, remote_loopback):
    fake_openai.enqueue("ok", usage=(1000, 2000))
    backend = openai_backend(model="gpt-4o-mini", api_key="sk-test")
    assert backend.price_per_mtok == Price(0.15, 0.60, cache_read=0.075)
    completion = backend.complete(ask())
    assert completion.cost_usd == pytest.approx((1000 * 0.15 + 2000 * 0.60) / 1e6)
    request = ask("z" * 4000, max_output_tokens=4096)  # 1000 tokens in, the reply's cap out
    assert backend.estimate_cost(request) == pytest.approx((1000 * 0.15 + 4096 * 0.60) / 1e6)
    uncapped = ask("z" * 4000)  # no cap: 1,024 tokens (the handler prices it as it learns)
    assert backend.estimate_cost(uncapped) == pytest.approx((1000 * 0.15 + 1024 * 0.60) / 1e6)


def test_cost_from_price_per_mtok(fake_openai, openai_backend):
    fake_openai.enqueue("ok", usage=(500_000, 100_000))
    backend = openai_backend(price_per_mtok=(2.0, 10.0))
    assert backend.complete(ask()).cost_usd == pytest.approx(1.0 + 1.0)
    assert backend.estimate_cost(ask("z" * 40, max_output_tokens=100)) == pytest.approx(
        (10 * 2.0 + 100 * 10.0) / 1e6)


def test_dated_model_names_use_the_table():
    backend = OpenAIBackend(model="gpt-4o-2024-08-06", api_key="sk-test")
    assert backend.price_per_mtok == prices.lookup("openai", "gpt-4o")
    assert (backend.price_per_mtok.input, backend.price_per_mtok.output) == \
        openai_compat.PRICES_PER_MTOK["gpt-4o"] == (2.50, 10.0)
    backend.close()


def test_unknown_price_is_none(fake_openai, openai_backend, remote_loopback):
    backend = openai_backend(model="some-unknown-model", api_key="sk-test")
    assert backend.estimate_cost(ask()) is None
    assert backend.complete(ask()).cost_usd is None


def test_unknown_price_blocks_a_budget(fake_openai, remote_loopback):
    with pytest.raises(ConfigError, match="price_per_mtok"):
        RLM(backend="openai", max_budget=1.0,
            backend_kwargs={"model": "mystery", "base_url": fake_openai.url, "api_key": "k"})


# -- retries and errors -----------------------------------------------------------------------
def test_429_is_retried_and_retry_after_honoured(fake_openai, openai_backend):
    fake_openai.enqueue(status=429, headers={"Retry-After": "0.1"}, times=2)
    fake_openai.enqueue("finally")
    backend = openai_backend(backoff_s=30.0)  # only Retry-After can make this fast
    started = time.monotonic()
    assert backend.complete(ask()).text == "finally"
    assert 0.2 <= time.monotonic() - started < 3.0
    assert len(fake_openai.requests) == 3


def test_429_after_every_retry_is_rate_limit_error(fake_openai, openai_backend):
    fake_openai.enqueue(status=429, times=3)
    with pytest.raises(RateLimitError, match=r"HTTP 429 \(after 2 retries\).*fake error 429"):
        openai_backend(max_retries=2).complete(ask())
    assert len(fake_openai.requests) == 3


def test_500s_become_bad_response_after_max_retries(fake_openai, openai_backend):
    fake_openai.enqueue(status=500, times=4)
    with pytest.raises(BadResponseError, match="HTTP 500") as info:
        openai_backend(max_retries=3).complete(ask())
    assert info.value.status_code == 500
    assert len(fake_openai.requests) == 4


def test_4xx_is_not_retried(fake_openai, openai_backend):
    fake_openai.enqueue(status=400)
    with pytest.raises(BadResponseError, match="HTTP 400 for model 'fake': fake error 400"):
        openai_backend().complete(ask())
    assert len(fake_openai.requests) == 1


def test_timeout_is_backend_timeout_error(fake_openai, openai_backend):
    fake_openai.enqueue("late", delay_s=3.0)
    started = time.monotonic()
    with pytest.raises(BackendTimeoutError):
        openai_backend(timeout_s=0.3).complete(ask())
    assert time.monotonic() - started < 2.0


def test_request_timeout_shortens_the_backend_timeout(fake_openai, openai_backend):
    fake_openai.enqueue("late", delay_s=3.0)
    started = time.monotonic()
    with pytest.raises(BackendTimeoutError):
        openai_backend(timeout_s=60).complete(ask(timeout_s=0.3))
    assert time.monotonic() - started < 2.0


def test_connection_refused_is_connection_error(openai_backend):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = openai_backend(base_url=f"http://127.0.0.1:{port}/v1", max_retries=2)
    with pytest.raises(BackendConnectionError, match="connection failed"):
        backend.complete(ask())


def test_dropped_connection_is_retried(fake_openai, openai_backend):
    fake_openai.enqueue(drop=True)
    fake_openai.enqueue("recovered")
    assert openai_backend().complete(ask()).text == "recovered"
    assert len(fake_openai.requests) == 2


def test_cancel_during_backoff_stops_promptly(fake_openai, openai_backend):
    fake_openai.enqueue(status=429, headers={"Retry-After": "20"}, times=5)
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled, match="HTTP 429"):
        openai_backend().complete(ask(cancel=cancel))
    assert time.monotonic() - started < 2.0
    assert len(fake_openai.requests) == 1


# -- keys -------------------------------------------------------------------------------------
def test_missing_key_for_a_remote_url():
    with pytest.raises(MissingKeyError, match="OPENAI_API_KEY") as info:
        OpenAIBackend(model="gpt-5", base_url="https://api.example.com/v1")
    assert "\n" not in str(info.value)
    with pytest.raises(MissingKeyError, match="'openrouter': set the OPENROUTER_API_KEY"):
        OpenAIBackend(model="x", provider="openrouter")


def test_no_key_needed_on_localhost():
    for url in ("http://127.0.0.1:9/v1", "http://localhost:9/v1", "http://[::1]:9/v1"):
        backend = OpenAIBackend(model="m", base_url=url)
        assert backend.api_key is None and backend.secrets() == []
        backend.close()


def test_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("GROQ_API_KEY", "gsk-env")
    backend = OpenAIBackend(model="llama", provider="groq")
    assert backend.secrets() == ["gsk-env"]
    assert backend.base_url == "https://api.groq.com/openai/v1"
    backend.close()


def test_presets_and_bad_arguments():
    backend = OpenAIBackend(model="qwen", provider="ollama")
    assert backend.base_url == "http://127.0.0.1:11434/v1" and backend.estimate_cost(ask()) == 0
    backend.close()
    with pytest.raises(ConfigError, match="unknown provider"):
        OpenAIBackend(model="m", provider="nope")
    with pytest.raises(ConfigError, match="base_url"):
        OpenAIBackend(model="m", base_url="ftp://127.0.0.1/v1")


def test_key_is_sent_but_never_shown(fake_openai, openai_backend, remote_loopback):
    key = "sk-very-secret-123"
    error = {"error": {"message": f"Incorrect API key provided: {key}"}}
    fake_openai.enqueue(status=401, body=error)
    backend = openai_backend(api_key=key)
    with pytest.raises(BadResponseError) as info:
        backend.complete(ask())
    assert fake_openai.requests[0].headers["authorization"] == f"Bearer {key}"
    assert key not in str(info.value) and "HTTP 401" in str(info.value)
    assert key not in json.dumps(backend.describe())
    assert backend.describe() == {"backend": "openai", "model": "fake",
                                  "base_url": fake_openai.url, "provider": "openai"}
    assert backend.secrets() == [key]


# -- async, concurrency -----------------------------------------------------------------------
def test_async_parity(fake_openai, openai_backend):
    backend = openai_backend(price_per_mtok=(1.0, 2.0))
    request = ask(max_output_tokens=20, temperature=0.0)
    fake_openai.enqueue("same", usage=(30, 4))
    fake_openai.enqueue("same", usage=(30, 4))
    sync = backend.complete(request)

    async def main():
        try:
            return await backend.acomplete(request)
        finally:
            await backend.aclose()

    result = asyncio.run(main())
    assert (sync.text, sync.input_tokens, sync.output_tokens, sync.cost_usd, sync.model) == (
        result.text, result.input_tokens, result.output_tokens, result.cost_usd, result.model)
    first, second = fake_openai.requests
    assert first.body == second.body


def test_async_retries_errors_and_cancel(fake_openai, openai_backend):
    backend = openai_backend(max_retries=1)
    fake_openai.enqueue(status=503)
    fake_openai.enqueue("ok")
    fake_openai.enqueue(status=500, times=2)
    fake_openai.enqueue(status=429, headers={"Retry-After": "20"}, times=2)

    async def main():
        try:
            assert (await backend.acomplete(ask())).text == "ok"
            with pytest.raises(BadResponseError, match="HTTP 500"):
                await backend.acomplete(ask())
            cancel = threading.Event()
            asyncio.get_running_loop().call_later(0.2, cancel.set)
            started = time.monotonic()
            with pytest.raises(Cancelled):
                await backend.acomplete(ask(cancel=cancel))
            assert time.monotonic() - started < 2.0
        finally:
            await backend.aclose()

    asyncio.run(main())
    assert len(fake_openai.requests) == 5


def test_concurrent_calls_share_one_client(openai_backend):
    with FakeOpenAIServer(reply="pong", latency_s=0.2) as slow:
        backend = openai_backend(base_url=slow.url)
        results: list[str] = []
        errors: list[BaseException] = []

        def call() -> None:
            try:
                results.append(backend.complete(ask()).text)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=call) for _ in range(16)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        backend.close()
    assert not errors and results == ["pong"] * 16
    assert elapsed < 2.5, elapsed


# -- end to end -------------------------------------------------------------------------------
def test_rlm_end_to_end_over_http(fake_openai):
    fake_openai.enqueue(repl('answer = llm_query("What is 2+2?")\nprint(answer)'),
                        usage=(100, 10))
    fake_openai.enqueue("4", usage=(20, 1))
    fake_openai.enqueue(repl("FINAL(answer)"), usage=(150, 5))
    with RLM(backend="openai", backend_kwargs={"model": "fake", "base_url": fake_openai.url},
             max_iterations=5) as rlm:
        result = rlm.completion("What is 2+2? Ask a sub-model.")
    assert (result.response, result.stop_reason) == ("4", "final")
    assert result.usage["fake"].calls == 3
    assert (result.input_tokens, result.output_tokens) == (270, 16)
    assert result.cost_usd == 0.0
    assert len(fake_openai.requests) == 3
    assert fake_openai.requests[1].body["messages"][-1]["content"] == "What is 2+2?"
