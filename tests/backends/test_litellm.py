"""The ``litellm`` backend through LiteLLM's own OpenAI path (``openai/<model>`` with
``base_url``), against the fake OpenAI server on 127.0.0.1: text, usage, prices (ours, then
LiteLLM's cost map), retries, error mapping, no key in errors, and a whole run."""

from __future__ import annotations

import time

import pytest

# the backend's module first: it keeps LiteLLM from fetching its cost map at import
pytest.importorskip("rlm.backends.litellm_backend")

from rlm import RLM
from rlm.backends.litellm_backend import LiteLLMBackend, litellm_price
from rlm.backends.prices import Price, lookup
from rlm.errors import (
    BackendConnectionError,
    BackendTimeoutError,
    BadResponseError,
    RateLimitError,
)
from rlm.types import CompletionRequest
from tests.conftest import repl

#: LiteLLM's lazy imports warn about pydantic's ``ReadOnly`` (not this project's code).
pytestmark = pytest.mark.filterwarnings("ignore:.*ReadOnly.*:UserWarning")
KEY = "sk-litellm-test-key"


def ask(text: str = "What is 2+2?", **kwargs) -> CompletionRequest:
    return CompletionRequest(messages=[{"role": "user", "content": text}], **kwargs)


@pytest.fixture
def make(fake_openai):
    def build(model: str = "openai/gpt-4o", **kwargs) -> LiteLLMBackend:
        kwargs.setdefault("base_url", fake_openai.url)
        kwargs.setdefault("api_key", KEY)
        kwargs.setdefault("backoff_s", 0.01)
        return LiteLLMBackend(model, **kwargs)
    return build


def test_text_usage_and_cost_by_our_table(fake_openai, make):
    fake_openai.enqueue("4", usage={"prompt_tokens": 100, "completion_tokens": 5,
                                    "prompt_tokens_details": {"cached_tokens": 60}})
    backend = make()
    completion = backend.complete(ask(max_output_tokens=20, stop=["END"], temperature=0.1))
    assert (completion.text, completion.input_tokens, completion.output_tokens,
            completion.cached_input_tokens) == ("4", 100, 5, 60)
    price = lookup("openai", "gpt-4o")
    assert backend.price_source == "rlm" and backend.price_per_mtok == price
    assert completion.cost_usd == pytest.approx(price.cost(100, 5, cache_read_tokens=60))
    [seen] = fake_openai.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.body["model"] == "gpt-4o" and seen.body["messages"] == ask().messages
    assert (seen.body["max_tokens"], seen.body["stop"], seen.body["temperature"]) == \
        (20, ["END"], 0.1)


def test_litellm_cost_map_prices_what_our_table_lacks(fake_openai, make):
    assert lookup("openai", "gpt-3.5-turbo") is None
    fake_openai.enqueue("ok", usage=(1000, 100))
    backend = make("openai/gpt-3.5-turbo")
    theirs = litellm_price("openai/gpt-3.5-turbo")
    assert backend.price_source == "litellm" and theirs is not None
    assert backend.complete(ask()).cost_usd == pytest.approx(theirs.cost(1000, 100))
    assert backend.estimate_cost(ask()) is not None


def test_unknown_and_overridden_prices(fake_openai, make):
    unknown = make("openai/no-such-model-anywhere")
    assert unknown.price_source is None and unknown.estimate_cost(ask()) is None
    assert unknown.complete(ask()).cost_usd is None
    mine = make("openai/no-such-model-anywhere", price_per_mtok=(1.0, 2.0))
    assert mine.price_source == "override" and mine.price_per_mtok == Price(1.0, 2.0)


def test_429_is_retried_after_retry_after_and_pauses_the_backend(fake_openai, make):
    fake_openai.enqueue(status=429, headers={"Retry-After": "0.3"})
    backend = make(backoff_s=30.0)  # only Retry-After can make this fast
    started = time.monotonic()
    assert backend.complete(ask()).text == "ok"
    assert 0.3 <= time.monotonic() - started < 10.0
    assert len(fake_openai.requests) == 2 and backend.limiter.pauses == 1


def test_errors_map_to_the_rlm_tree(fake_openai, make):
    fake_openai.enqueue(status=429, times=2)
    with pytest.raises(RateLimitError):
        make(max_retries=1).complete(ask())
    fake_openai.enqueue(status=500, times=2)
    fake_openai.enqueue("after 500s")
    assert make(max_retries=2).complete(ask()).text == "after 500s"
    fake_openai.reset()
    fake_openai.enqueue(status=400)
    with pytest.raises(BadResponseError, match="HTTP 400"):
        make().complete(ask())
    assert len(fake_openai.requests) == 1  # a refused request is not retried


def test_dropped_connections_and_timeouts(fake_openai, make):
    fake_openai.enqueue(drop=True)
    fake_openai.enqueue("recovered")
    assert make().complete(ask()).text == "recovered"
    fake_openai.enqueue(drop=True, times=3)
    with pytest.raises(BackendConnectionError):
        make(max_retries=1).complete(ask())
    fake_openai.reset()
    fake_openai.enqueue("late", delay_s=5.0)
    started = time.monotonic()
    with pytest.raises(BackendTimeoutError):
        make(timeout_s=0.5).complete(ask())
    assert time.monotonic() - started < 4.0


def test_no_key_in_an_error_message(fake_openai, make):
    fake_openai.enqueue(status=401, body={"error": {"message": f"bad key {KEY}"}})
    with pytest.raises(BadResponseError) as info:
        make().complete(ask())
    assert KEY not in str(info.value)
    backend = make()
    assert backend.secrets() == [KEY] and KEY not in str(backend.describe())


def test_a_run_through_the_registry(fake_openai):
    code = repl("FINAL(llm_query('colour?'))")
    fake_openai.reply = lambda body: code if body["model"] == "gpt-4o" else "blue"
    options = {"base_url": fake_openai.url, "api_key": KEY}
    with RLM(backend="litellm", backend_kwargs={"model": "openai/gpt-4o", **options},
             sub_backend={"backend": "litellm", "model": "openai/gpt-4o-mini", **options},
             max_iterations=2, max_budget=1.0) as rlm:
        result = rlm.completion("Go.")
    assert result.response == "blue" and 0 < result.cost_usd < 1.0
