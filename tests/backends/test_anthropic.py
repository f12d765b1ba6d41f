"""The ``anthropic`` backend: the official SDK pointed at ``tests/fakes/anthropic_server.py``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest

from rlm import RLM
from rlm.backends.anthropic_messages import AnthropicBackend
from rlm.backends.prices import Price, lookup
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
from tests.fakes.anthropic_server import FakeAnthropicServer

SONNET = lookup("anthropic", "claude-sonnet-4")
assert SONNET is not None


def ask(text: str = "What is 2+2?", **kwargs: Any) -> CompletionRequest:
    return CompletionRequest(messages=[{"role": "user", "content": text}], **kwargs)


@pytest.fixture
def fake() -> Iterator[FakeAnthropicServer]:
    with FakeAnthropicServer(reply="4") as server:
        yield server


@pytest.fixture
def claude(fake: FakeAnthropicServer) -> Iterator[Callable[..., AnthropicBackend]]:
    made: list[AnthropicBackend] = []

    def make(**kwargs: Any) -> AnthropicBackend:
        kwargs.setdefault("model", "claude-sonnet-4")
        kwargs.setdefault("api_key", "sk-ant-test-key")
        kwargs.setdefault("base_url", fake.base_url)
        kwargs.setdefault("backoff_s", 0.01)
        backend = AnthropicBackend(**kwargs)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


# -- requests and usage -------------------------------------------------------------------------
def test_system_prompt_goes_in_its_own_field_and_stop_sequences_apply(fake, claude):
    fake.enqueue("the answer END and more")
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say it."}]
    completion = claude().complete(CompletionRequest(messages=messages, stop=["END"],
                                                     max_output_tokens=50))
    assert completion.text == "the answer "
    [seen] = fake.requests
    assert seen.path == "/v1/messages"
    assert seen.body["system"][0]["text"] == "You are terse."
    assert [m["role"] for m in seen.body["messages"]] == ["user"]
    assert seen.body["stop_sequences"] == ["END"] and seen.body["max_tokens"] == 50
    assert "anthropic-version" in seen.headers
    assert "sk-ant-test-key" in (seen.headers.get("x-api-key", "")
                                 + seen.headers.get("authorization", ""))


def test_usage_and_cost_of_a_plain_call(fake, claude):
    completion = claude().complete(ask("x" * 400))  # 100 tokens in, 1 out
    assert (completion.input_tokens, completion.output_tokens) == (100, 1)
    assert completion.cached_input_tokens == 0
    assert completion.cost_usd == pytest.approx((100 * 3.0 + 1 * 15.0) / 1e6)


def test_a_query_sends_no_breakpoint_and_a_turn_sends_two(fake, claude):
    backend = claude()
    backend.complete(ask("one-shot"))
    assert "cache_control" not in str(fake.requests[-1].body)
    history = [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
               {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    backend.complete(CompletionRequest(messages=history, purpose="turn"))
    body = fake.requests[-1].body
    marked = [i for i, m in enumerate(body["messages"]) if not isinstance(m["content"], str)
              and "cache_control" in m["content"][-1]]
    assert marked == [0, 2] and "cache_control" in body["system"][0]
    claude(prompt_caching=False).complete(CompletionRequest(messages=history, purpose="turn"))
    assert "cache_control" not in str(fake.requests[-1].body)


def test_cache_writes_and_reads_are_charged_at_their_own_prices(fake, claude):
    backend = claude()
    history = [{"role": "system", "content": "S" * 4000}, {"role": "user", "content": "q" * 400}]
    first = backend.complete(CompletionRequest(messages=history, purpose="turn"))
    assert first.cached_input_tokens == 0
    assert first.cost_usd == pytest.approx((1100 * SONNET.write_price + 1 * 15.0) / 1e6)
    history += [{"role": "assistant", "content": "a" * 40}, {"role": "user", "content": "r" * 40}]
    second = backend.complete(CompletionRequest(messages=history, purpose="turn"))
    assert second.input_tokens == 1120 and second.cached_input_tokens == 1100
    assert second.cost_usd == pytest.approx((1100 * SONNET.read_price + 20 * SONNET.write_price
                                             + 1 * 15.0) / 1e6)


def test_a_five_turn_run_reads_its_history_from_the_cache(fake, tmp_path):
    """The issue's check: turns 2-5 report cache reads, charged at the cache price."""
    replies = [repl(f"x{i} = {i}\nprint(x{i})") for i in range(4)] + [repl("FINAL(x3)")]

    def reply(body: dict[str, Any]) -> str:
        return replies[min(len(fake.usages), len(replies) - 1)]

    fake.reply = reply
    rlm = RLM(backend="anthropic", backend_kwargs={
        "model": "claude-sonnet-4", "api_key": "sk-ant-run", "base_url": fake.base_url},
        max_iterations=8, max_budget=1.0, trace=str(tmp_path / "run.jsonl"))
    result = rlm.completion("Count to three.")
    rlm.close()
    trace = (tmp_path / "run.jsonl").read_text()
    assert '"lm_call"' in trace and "sk-ant-run" not in trace  # the key never reaches a trace
    assert result.response == "3" and len(fake.usages) == 5
    reads = [u["cache_read_input_tokens"] for u in fake.usages]
    assert reads[0] == 0 and all(r > 0 for r in reads[1:])
    assert all(reads[i] > reads[i - 1] for i in range(2, 5))  # the history grows, all cached
    charged = sum(Price.cost(SONNET, u["input_tokens"] + u["cache_creation_input_tokens"]
                             + u["cache_read_input_tokens"], u["output_tokens"],
                             cache_read_tokens=u["cache_read_input_tokens"],
                             cache_write_tokens=u["cache_creation_input_tokens"])
                  for u in fake.usages)
    assert result.cost_usd == pytest.approx(charged)
    uncached = sum(SONNET.cost(u["input_tokens"] + u["cache_creation_input_tokens"]
                               + u["cache_read_input_tokens"], u["output_tokens"])
                   for u in fake.usages)
    assert result.cost_usd < uncached


def test_thinking_is_an_option(fake, claude):
    claude(thinking_tokens=2048).complete(ask(max_output_tokens=100))
    body = fake.requests[-1].body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body["max_tokens"] == 2148


def test_estimates_and_prices(claude):
    backend = claude()
    request = ask("z" * 4000, max_output_tokens=4096)  # 1000 tokens in, the reply's cap out
    assert backend.estimate_cost(request) == pytest.approx(
        (1000 * SONNET.write_price + 4096 * 15.0) / 1e6)
    uncapped = ask("z" * 4000)  # the default cap (4,096) is reserved up to 1,024 tokens
    assert backend.estimate_cost(uncapped) == pytest.approx(
        (1000 * SONNET.write_price + 1024 * 15.0) / 1e6)
    assert claude(model="claude-unknown").estimate_cost(request) is None
    assert not claude(model="claude-unknown").prices_known
    custom = claude(model="claude-unknown", price_per_mtok=(1.0, 2.0, 1.5, 0.1))
    assert custom.price_per_mtok == Price(1.0, 2.0, 1.5, 0.1) and custom.prices_known


# -- errors and retries -------------------------------------------------------------------------
def test_rate_limits_are_retried_after_retry_after(fake, claude):
    fake.enqueue(status=429, headers={"retry-after": "0.3"})
    started = time.monotonic()
    assert claude().complete(ask()).text == "4"
    assert time.monotonic() - started >= 0.3 and len(fake.requests) == 2


def test_overloaded_is_retried_then_a_rate_limit_error(fake, claude):
    fake.enqueue(status=529, headers={"retry-after": "0"}, times=3)
    assert claude().complete(ask()).text == "4"
    fake.enqueue(status=529, headers={"retry-after": "0"}, times=5)
    with pytest.raises(RateLimitError) as info:
        claude(max_retries=2).complete(ask())
    assert info.value.status_code == 529
    assert len(fake.requests) == 4 + 3


def test_a_refused_request_is_not_retried(fake, claude):
    fake.enqueue(status=400)
    with pytest.raises(BadResponseError) as info:
        claude().complete(ask())
    assert info.value.status_code == 400 and len(fake.requests) == 1


def test_server_errors_are_retried(fake, claude):
    fake.enqueue(status=500, times=2)
    assert claude().complete(ask()).text == "4" and len(fake.requests) == 3


def test_timeouts_and_dead_servers_map_to_backend_errors(fake, claude):
    fake.enqueue(delay_s=5)
    with pytest.raises(BackendTimeoutError):
        claude(timeout_s=0.3).complete(ask())
    dead = AnthropicBackend("claude-sonnet-4", api_key="k", base_url="http://127.0.0.1:9",
                            max_retries=1, backoff_s=0.01)
    with pytest.raises(BackendConnectionError):
        dead.complete(ask())
    dead.close()


def test_a_cancel_ends_a_call_in_flight(fake, claude):
    fake.enqueue(delay_s=30)
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        claude().complete(ask(cancel=cancel))
    assert time.monotonic() - started < 3


def test_the_key_never_shows_in_an_error(fake, claude):
    key = "sk-ant-very-secret-999"
    fake.enqueue(status=401, body={"type": "error", "error": {
        "type": "authentication_error", "message": f"invalid x-api-key {key}"}})
    with pytest.raises(BackendError) as info:
        claude(api_key=key).complete(ask())
    assert key not in str(info.value) and "***" in str(info.value)


def test_a_missing_key_names_the_variable(monkeypatch):
    with pytest.raises(MissingKeyError, match="ANTHROPIC_API_KEY"):
        AnthropicBackend("claude-sonnet-4")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env")
    backend = AnthropicBackend("claude-sonnet-4")
    assert backend.secrets() == ["sk-ant-env"] and "sk-ant-env" not in str(backend.describe())
    backend.close()


def test_impossible_usage_is_refused(fake, claude):
    fake.enqueue(body={"id": "m", "type": "message", "role": "assistant", "model": "m",
                       "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
                       "usage": {"input_tokens": -5, "output_tokens": 1}})
    with pytest.raises(BadResponseError, match="impossible usage"):
        claude().complete(ask())


@pytest.mark.parametrize("sdk_error", sorted(
    (cls for cls in vars(anthropic).values()
     if isinstance(cls, type) and issubclass(cls, anthropic.APIStatusError)),
    key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_every_sdk_status_error_is_mapped(claude, sdk_error):
    import httpx

    response = httpx.Response(503, request=httpx.Request("POST", "http://x/v1/messages"))
    try:
        exc = sdk_error("boom", response=response, body=None)
    except TypeError:
        pytest.skip(f"{sdk_error.__name__} is built differently")
    failure = claude()._classify(exc)
    assert failure is not None and isinstance(failure.error, BackendError)

