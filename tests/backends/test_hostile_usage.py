"""A server reporting impossible usage fails cleanly and can never lower the budget."""

from __future__ import annotations

import asyncio

import pytest

from rlm import RLM
from rlm.errors import BadResponseError, ConfigError
from rlm.types import MAX_TOKENS_PER_CALL, CompletionRequest
from tests.conftest import repl

NAN, INF = float("nan"), float("inf")


def ask(text: str = "What is 2+2?") -> CompletionRequest:
    return CompletionRequest(messages=[{"role": "user", "content": text}])


@pytest.mark.parametrize("usage", [
    (-5, 3), (3, -1_000_000_000), (INF, 1), (1, INF), (NAN, 1), (-INF, 0), (1e300, 1),
    (MAX_TOKENS_PER_CALL + 1, 0), (2.5, 1), ("12", 1), (True, 1), ([], 1), ({}, 1),
])
def test_impossible_usage_is_a_bad_response(fake_openai, openai_backend, usage):
    fake_openai.enqueue("4", usage=usage)
    backend = openai_backend(price_per_mtok=(1.0, 1.0))
    with pytest.raises(BadResponseError, match=r"impossible usage: (input|output)") as info:
        backend.complete(ask())
    assert "fake" in str(info.value) and info.value.status_code == 200
    fake_openai.enqueue("4", usage=usage)

    async def main():
        try:
            return await backend.acomplete(ask())
        finally:
            await backend.aclose()

    with pytest.raises(BadResponseError, match="impossible usage"):
        asyncio.run(main())


def test_infinity_in_the_raw_body_is_not_an_overflow_error(fake_openai, openai_backend):
    body = ('{"choices": [{"message": {"role": "assistant", "content": "hi"}}], '
            '"usage": {"prompt_tokens": Infinity, "completion_tokens": 1}}')
    fake_openai.enqueue(body=body)
    with pytest.raises(BadResponseError, match="input_tokens=inf"):
        openai_backend().complete(ask())


@pytest.mark.parametrize("usage", ["lots", [1, 2], 7])
def test_a_usage_that_is_not_an_object_is_malformed(fake_openai, openai_backend, usage):
    body = {"choices": [{"message": {"role": "assistant", "content": "hi"}}], "usage": usage}
    fake_openai.enqueue(body=body)
    with pytest.raises(BadResponseError, match="malformed response"):
        openai_backend().complete(ask())


def test_null_counts_are_estimated_like_missing_ones(fake_openai, openai_backend):
    fake_openai.enqueue("x" * 40, usage={"prompt_tokens": None, "completion_tokens": None})
    completion = openai_backend().complete(ask("y" * 400))
    assert (completion.input_tokens, completion.output_tokens) == (100, 10)


@pytest.mark.parametrize("cost", [-39_999.99, 1e300, NAN, "free"])
def test_a_cost_field_from_the_server_is_ignored(fake_openai, openai_backend, cost):
    fake_openai.enqueue("ok", usage={"prompt_tokens": 1000, "completion_tokens": 1000,
                                     "cost": cost})
    completion = openai_backend(price_per_mtok=(1.0, 3.0)).complete(ask())
    assert completion.cost_usd == pytest.approx(0.004)


@pytest.mark.parametrize("price", [(NAN, 1.0), (1.0, -2.0), (INF, 0.0), (1.0,), "cheap"])
def test_bad_prices_are_refused(openai_backend, price):
    with pytest.raises(ConfigError, match="price_per_mtok"):
        openai_backend(price_per_mtok=price)


def test_negative_usage_never_lowers_the_budget_and_it_still_trips(fake_openai):
    """The review's case: -10^10 tokens would have been a cost of -$20,000."""
    fake_openai.enqueue(repl("try:\n    llm_query('hostile')\nexcept Exception as exc:\n"
                             "    print('failed', exc)\nfor _ in range(20):\n"
                             "    llm_query('honest')"), usage=(1000, 10))
    fake_openai.enqueue("lies", usage=(-10**10, -10**10))
    fake_openai.enqueue("ok", usage=(2000, 0), times=20)
    kwargs = {"model": "fake", "base_url": fake_openai.url, "price_per_mtok": (1.0, 1.0)}
    with RLM(backend="openai", backend_kwargs=kwargs, max_budget=0.01,
             max_iterations=5, extract_on_limit=False) as rlm:
        result = rlm.completion("spend")
    assert result.stop_reason == "budget"
    assert 0.008 < result.cost_usd <= 0.01 + 0.002 + 1e-9
    assert result.input_tokens > 0 and result.output_tokens > 0
    lm_calls = [e for n in result.trace.walk() for e in n.lm_calls]
    [hostile] = [e for e in lm_calls if e.data.get("error")]
    assert hostile.data["error"]["type"] == "BadResponseError"
    assert all(e.data["cost_usd"] >= 0 and e.data["input_tokens"] >= 0 for e in lm_calls)
    code = [e for n in result.trace.walk() for e in n.events if e.type == "code_exec"]
    assert "failed BadResponseError" in code[0].data["stdout"]
