"""The openai backend's ``Idempotency-Key``: one per logical call, the same on its retries,
so a POST re-sent after a dropped connection is not billed twice by a provider that
honours the header."""

from __future__ import annotations

import asyncio

from rlm.types import CompletionRequest


def ask(text: str = "hi") -> CompletionRequest:
    return CompletionRequest(messages=[{"role": "user", "content": text}])


def test_a_retry_after_a_dropped_connection_carries_the_same_key(fake_openai, openai_backend):
    fake_openai.enqueue(drop=True)  # the connection drops before any answer
    fake_openai.enqueue(status=503)
    fake_openai.enqueue("recovered")
    backend = openai_backend()
    assert backend.complete(ask()).text == "recovered"
    keys = [r.headers.get("idempotency-key") for r in fake_openai.requests]
    assert len(keys) == 3 and keys[0] and len(set(keys)) == 1
    backend.complete(ask())  # the next logical call has a key of its own
    assert fake_openai.requests[-1].headers["idempotency-key"] != keys[0]


def test_the_async_path_keeps_the_key_too(fake_openai, openai_backend):
    fake_openai.enqueue(drop=True)
    fake_openai.enqueue("recovered")
    backend = openai_backend()

    async def main() -> str:
        try:
            return (await backend.acomplete(ask())).text
        finally:
            await backend.aclose()

    assert asyncio.run(main()) == "recovered"
    first, second = (r.headers.get("idempotency-key") for r in fake_openai.requests)
    assert first and first == second


def test_idempotency_can_be_turned_off(fake_openai, openai_backend):
    openai_backend(idempotency=False).complete(ask())
    assert "idempotency-key" not in fake_openai.requests[0].headers
