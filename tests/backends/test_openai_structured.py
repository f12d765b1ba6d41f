"""The openai backend and typed sub-calls: ``response_format`` against the fake server."""

from __future__ import annotations

import asyncio
import json

import pytest

from rlm import RLM
from rlm.backends.openai_compat import OpenAIBackend
from rlm.errors import BadResponseError
from rlm.types import CompletionRequest
from tests.conftest import repl
from tests.fakes.openai_server import FakeOpenAIServer

SCHEMA = {"type": "array", "items": {"enum": ["a", "b"]}}
FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA,
                                                 "strict": False}}


def ask(schema=None) -> CompletionRequest:
    return CompletionRequest(messages=[{"role": "user", "content": "label"}],
                             response_schema=schema)


def test_a_typed_request_sends_response_format(fake_openai, openai_backend):
    fake_openai.enqueue('["a"]')
    backend = openai_backend()
    assert backend.complete(ask(SCHEMA)).text == '["a"]'
    backend.complete(ask())
    assert fake_openai.response_formats == [FORMAT, None]
    assert backend.structured_output is True and backend.enforces_schema is False


def test_the_request_format_wins_over_extra_body(fake_openai, openai_backend):
    backend = openai_backend(extra_body={"response_format": {"type": "json_object"}})
    backend.complete(ask(SCHEMA))
    backend.complete(ask())
    assert fake_openai.response_formats == [FORMAT, {"type": "json_object"}]


def test_a_server_refusing_response_format_is_asked_again_without_it_and_remembered():
    with FakeOpenAIServer(reply='["b"]', refuse_response_format=True) as fake, \
            OpenAIBackend(model="fake", base_url=fake.url, backoff_s=0.01) as backend:
        assert backend.complete(ask(SCHEMA)).text == '["b"]'
        assert fake.response_formats == [FORMAT, None]
        assert backend.structured_output is False
        backend.complete(ask(SCHEMA))  # not offered again
        assert fake.response_formats == [FORMAT, None, None]


def test_the_async_path_retries_without_response_format_too():
    async def main(url: str) -> str:
        backend = OpenAIBackend(model="fake", base_url=url, backoff_s=0.01)
        try:
            return (await backend.acomplete(ask(SCHEMA))).text
        finally:
            await backend.aclose()

    with FakeOpenAIServer(reply='["a"]', refuse_response_format=True) as fake:
        assert asyncio.run(main(fake.url)) == '["a"]'
        assert fake.response_formats == [FORMAT, None]


def test_another_400_is_not_retried(fake_openai, openai_backend):
    fake_openai.enqueue(status=400)
    backend = openai_backend()
    with pytest.raises(BadResponseError, match="HTTP 400"):
        backend.complete(ask(SCHEMA))
    assert len(fake_openai.requests) == 1 and backend.structured_output is True


def test_structured_output_can_be_turned_off(fake_openai, openai_backend):
    openai_backend(structured_output=False).complete(ask(SCHEMA))
    assert fake_openai.response_formats == [None]


def test_a_typed_llm_query_through_the_openai_backend():
    def reply(body):
        content = body["messages"][-1]["content"]
        if body["messages"][0]["role"] == "system":
            if "Output:" not in content:
                return repl("labels = llm_query('Label: x, y', schema=list[Literal['a', 'b']])\n"
                            "print(labels)")
            return repl("FINAL(labels)")
        return "Labels: [\"a\", \"b\"]" if body.get("response_format") else "?"

    with FakeOpenAIServer(reply=reply) as fake, \
            RLM(backend="openai", backend_kwargs={"model": "fake", "base_url": fake.url}) as rlm:
        result = rlm.completion("q", context="c", schema=list[str])
    assert result.output == ["a", "b"]
    typed = [f for f in fake.response_formats if f is not None]
    assert [json.dumps(f["json_schema"]["schema"]) for f in typed] == [
        json.dumps({"type": "array", "items": {"enum": ["a", "b"]}})]
