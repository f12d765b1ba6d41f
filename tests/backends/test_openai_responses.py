"""The openai backend's Responses API option (``api="responses"``) against the fake
server's ``/v1/responses``: the request it sends, the text of the ``message`` output,
reasoning tokens counted as output, schemas, retries, the async path and a whole run."""

from __future__ import annotations

import asyncio

import pytest

from rlm import RLM
from rlm.backends.prices import Price
from rlm.errors import ConfigError
from rlm.types import CompletionRequest
from tests.conftest import repl

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def ask(**kwargs) -> CompletionRequest:
    return CompletionRequest(messages=[{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "What is 2+2?"}], **kwargs)


def test_a_responses_call_and_its_reasoning_tokens(fake_openai, openai_backend):
    fake_openai.reasoning_tokens = 300
    backend = openai_backend(api="responses", price_per_mtok=(1.0, 4.0),
                             extra_body={"reasoning": {"effort": "low"}})
    completion = backend.complete(ask(max_output_tokens=500, temperature=0.5, stop=["X"]))
    assert completion.text == "ok"
    [seen] = fake_openai.requests
    assert seen.path == "/v1/responses"
    assert seen.body == {"model": "fake", "reasoning": {"effort": "low"}, "store": False,
                         "instructions": "Be brief.",
                         "input": [{"role": "user", "content": "What is 2+2?"}],
                         "max_output_tokens": 500, "temperature": 0.5}  # no stop: not in the API
    # "ok" is 1 token of text; the 300 reasoning tokens are output tokens too
    assert completion.output_tokens == 301
    assert completion.input_tokens == 6  # "Be brief." + the question, 4 characters a token
    assert completion.cost_usd == pytest.approx(Price(1.0, 4.0).cost(6, 301))


def test_reasoning_left_out_of_output_tokens_is_still_counted(fake_openai, openai_backend):
    usage = {"input_tokens": 10, "output_tokens": 5,
             "output_tokens_details": {"reasoning_tokens": 50}}
    body = {"output": [{"type": "message", "content": [{"type": "output_text", "text": "a"},
                                                       {"type": "output_text", "text": "b"}]}],
            "usage": usage}
    fake_openai.enqueue(body=body)
    completion = openai_backend(api="responses").complete(ask())
    assert (completion.text, completion.output_tokens) == ("ab", 50)


def test_a_schema_goes_in_text_format_and_a_refusal_drops_it(fake_openai, openai_backend):
    backend = openai_backend(api="responses")
    backend.complete(ask(response_schema=SCHEMA))
    assert fake_openai.requests[0].body["text"] == {"format": {
        "type": "json_schema", "name": "answer", "schema": SCHEMA, "strict": False}}
    fake_openai.enqueue(status=400, body={"error": {"message": "text.format json_schema "
                                                                "is not supported"}})
    assert backend.complete(ask(response_schema=SCHEMA)).text == "ok"
    assert "text" not in fake_openai.requests[-1].body and not backend.structured_output


def test_malformed_output_is_bad_response(fake_openai, openai_backend):
    from rlm.errors import BadResponseError

    fake_openai.enqueue(body={"output": "nope"})
    with pytest.raises(BadResponseError, match="malformed response"):
        openai_backend(api="responses").complete(ask())


def test_retries_keep_the_path_and_the_idempotency_key(fake_openai, openai_backend):
    fake_openai.enqueue(status=429, headers={"Retry-After": "0.05"})
    fake_openai.enqueue(drop=True)
    backend = openai_backend(api="responses")
    assert backend.complete(ask()).text == "ok"
    assert [r.path for r in fake_openai.requests] == ["/v1/responses"] * 3
    assert len({r.headers["idempotency-key"] for r in fake_openai.requests}) == 1


def test_the_async_path(fake_openai, openai_backend):
    fake_openai.reasoning_tokens = 7
    backend = openai_backend(api="responses")

    async def main():
        try:
            return await backend.acomplete(ask())
        finally:
            await backend.aclose()

    completion = asyncio.run(main())
    assert (completion.text, completion.output_tokens) == ("ok", 8)


def test_an_unknown_api_is_a_config_error(openai_backend):
    with pytest.raises(ConfigError, match="api must be"):
        openai_backend(api="assistants")


def test_a_run_on_the_responses_api(fake_openai):
    code = repl("FINAL(llm_query('colour?'))")
    fake_openai.reply = lambda body: code if body["model"] == "root" else "blue"
    options = {"backend": "openai", "base_url": fake_openai.url, "api": "responses"}
    with RLM(backend={**options, "model": "root"}, sub_backend={**options, "model": "sub"},
             max_iterations=2) as rlm:
        result = rlm.completion("Go.")
    assert result.response == "blue"
    assert {r.path for r in fake_openai.requests} == {"/v1/responses"}
