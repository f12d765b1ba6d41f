"""The contract of ``rlm.backends.base.LMBackend``, checked the same way for every backend.

Subjects: ``scripted``, ``openai`` (against ``tests/fakes/openai_server.py``, on chat
completions and on the Responses API), ``litellm`` (LiteLLM's OpenAI path against the same
fake), ``anthropic`` and ``gemini`` (their SDKs against ``tests/fakes/anthropic_server.py`` and
``gemini_server.py``) and ``local`` (the embedded model, marker ``model``).  No test here
names an implementation: what differs is only how each subject is built (``Subject``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from rlm.backends.base import LMBackend
from rlm.backends.openai_compat import OpenAIBackend
from rlm.backends.scripted import ScriptedBackend
from rlm.errors import BackendError, Cancelled
from rlm.types import Completion, CompletionRequest, Message
from tests.fakes.anthropic_server import FakeAnthropicServer, text_of
from tests.fakes.gemini_server import FakeGeminiServer
from tests.fakes.openai_server import FakeOpenAIServer

#: How long a "slow" call takes when nothing cancels it; a cancelled one ends long before.
SLOW_S = 60.0
#: How soon after its cancel a call must have ended.
CANCEL_BOUND_S = 10.0


@dataclass
class Subject:
    """A backend under test and the ways to get the calls the contract talks about.

    - ``backend``: a working backend, shared (tests never close it);
    - ``fresh()``: a new backend of the same kind, for tests that close it;
    - ``slow(cancel)``: a backend and a request (watching ``cancel``) that would take
      ``SLOW_S`` or more;
    - ``failing()``: a backend and a request it cannot answer;
    - ``run(coroutine)``: runs it on the subject's one event loop (async clients are bound
      to the loop that opened them; the subject closes them there).
    """

    backend: LMBackend
    fresh: Callable[[], LMBackend]
    slow: Callable[[threading.Event], tuple[LMBackend, CompletionRequest]]
    failing: Callable[[], tuple[LMBackend, CompletionRequest]]
    run: Callable[[Coroutine[Any, Any, Any]], Any]

    def call(self, backend: LMBackend, request: CompletionRequest, twin: str) -> Completion:
        """``backend.complete(request)``, or its ``acomplete`` twin on the subject's loop."""
        if twin == "complete":
            return backend.complete(request)
        return self.run(backend.acomplete(request))


def ask(text: str, **kwargs: Any) -> CompletionRequest:
    return CompletionRequest(messages=[{"role": "user", "content": text}],
                             max_output_tokens=8, temperature=0.0, **kwargs)


def _echo(messages: list[Message], depth: int) -> str:
    return f"echo: {messages[-1]['content']}"


def _scripted(runner: asyncio.Runner) -> Iterator[Subject]:
    def make(**kwargs: Any) -> ScriptedBackend:
        return ScriptedBackend(_echo, cost_per_call=0.001, **kwargs)

    yield Subject(
        backend=make(), fresh=make,
        slow=lambda cancel: (make(latency_s=SLOW_S), ask("Say hello.", cancel=cancel)),
        failing=lambda: (ScriptedBackend([]), ask("one call too many")), run=runner.run)


def _openai(runner: asyncio.Runner, **options: Any) -> Iterator[Subject]:
    def reply(body: dict[str, Any]) -> str:
        return f"echo: {body['messages'][-1]['content']}"

    with FakeOpenAIServer(reply=reply) as fake:
        made: list[OpenAIBackend] = []

        def make() -> OpenAIBackend:
            backend = OpenAIBackend(model="fake", base_url=fake.url, backoff_s=0.01,
                                    api_key="sk-contract-secret", price_per_mtok=(1.0, 2.0),
                                    **options)
            made.append(backend)
            return backend

        def slow(cancel: threading.Event) -> tuple[LMBackend, CompletionRequest]:
            fake.enqueue(delay_s=SLOW_S)
            return shared, ask("Say hello.", cancel=cancel)

        def failing() -> tuple[LMBackend, CompletionRequest]:
            fake.enqueue(status=400)  # a request the provider refuses: never retried
            return shared, ask("refused")

        shared = make()
        yield Subject(backend=shared, fresh=make, slow=slow, failing=failing, run=runner.run)
        for backend in made:
            runner.run(backend.aclose())  # where its async client was opened


def _litellm(runner: asyncio.Runner) -> Iterator[Subject]:
    from rlm.backends.litellm_backend import LiteLLMBackend

    def reply(body: dict[str, Any]) -> str:
        return f"echo: {body['messages'][-1]['content']}"

    with FakeOpenAIServer(reply=reply) as fake:
        def make() -> LMBackend:
            return LiteLLMBackend("openai/fake", base_url=fake.url, backoff_s=0.01,
                                  api_key="sk-litellm-contract-secret",
                                  price_per_mtok=(1.0, 2.0))

        def slow(cancel: threading.Event) -> tuple[LMBackend, CompletionRequest]:
            fake.enqueue(delay_s=SLOW_S)
            return shared, ask("Say hello.", cancel=cancel)

        def failing() -> tuple[LMBackend, CompletionRequest]:
            fake.enqueue(status=400)
            return shared, ask("refused")

        shared = make()
        yield Subject(backend=shared, fresh=make, slow=slow, failing=failing, run=runner.run)


def _anthropic(runner: asyncio.Runner) -> Iterator[Subject]:
    from rlm.backends.anthropic_messages import AnthropicBackend

    def reply(body: dict[str, Any]) -> str:
        return f"echo: {text_of(body['messages'][-1]['content'])}"

    with FakeAnthropicServer(reply=reply) as fake:
        made: list[LMBackend] = []

        def make() -> LMBackend:
            backend = AnthropicBackend("claude-sonnet-4", base_url=fake.base_url,
                                       backoff_s=0.01, api_key="sk-ant-contract-secret")
            made.append(backend)
            return backend

        def slow(cancel: threading.Event) -> tuple[LMBackend, CompletionRequest]:
            fake.enqueue(delay_s=SLOW_S)
            return shared, ask("Say hello.", cancel=cancel)

        def failing() -> tuple[LMBackend, CompletionRequest]:
            fake.enqueue(status=400)
            return shared, ask("refused")

        shared = make()
        yield Subject(backend=shared, fresh=make, slow=slow, failing=failing, run=runner.run)
        for backend in made:
            backend.close()


def _gemini(runner: asyncio.Runner) -> Iterator[Subject]:
    from rlm.backends.gemini_genai import GeminiBackend

    def reply(body: dict[str, Any]) -> str:
        return f"echo: {body['contents'][-1]['parts'][0]['text']}"

    with FakeGeminiServer(reply=reply) as fake:
        made: list[LMBackend] = []

        def make() -> LMBackend:
            backend = GeminiBackend("gemini-2.5-flash", base_url=fake.base_url,
                                    backoff_s=0.01, api_key="AIza-contract-secret")
            made.append(backend)
            return backend

        def slow(cancel: threading.Event) -> tuple[LMBackend, CompletionRequest]:
            fake.enqueue(delay_s=SLOW_S)
            return shared, ask("Say hello.", cancel=cancel)

        def failing() -> tuple[LMBackend, CompletionRequest]:
            fake.enqueue(status=400)
            return shared, ask("refused")

        shared = make()
        yield Subject(backend=shared, fresh=make, slow=slow, failing=failing, run=runner.run)
        for backend in made:
            backend.close()


def _local(request: pytest.FixtureRequest, runner: asyncio.Runner) -> Iterator[Subject]:
    from rlm.backends.local import LocalBackend

    shared: LMBackend = request.getfixturevalue("local_backend")
    path = str(request.getfixturevalue("local_model_path"))
    made: list[LMBackend] = []

    def make() -> LMBackend:
        backend = LocalBackend(path, n_ctx=1024, lanes=1)
        made.append(backend)
        return backend

    def slow(cancel: threading.Event) -> tuple[LMBackend, CompletionRequest]:
        count = "Write the numbers from 1 to 2000, one per line, and nothing else."
        return shared, CompletionRequest(messages=[{"role": "user", "content": count}],
                                         max_output_tokens=4000, cancel=cancel)

    def failing() -> tuple[LMBackend, CompletionRequest]:
        return shared, ask("word " * 12_000)  # more than the model's window

    yield Subject(backend=shared, fresh=make, slow=slow, failing=failing, run=runner.run)
    for backend in made:
        backend.close()


#: LiteLLM's lazy imports warn about pydantic's ``ReadOnly`` (not this project's code).
_LITELLM_WARNING = pytest.mark.filterwarnings("ignore:.*ReadOnly.*:UserWarning")


@pytest.fixture(params=["scripted", "openai", "openai-responses", "anthropic", "gemini",
                        pytest.param("litellm", marks=_LITELLM_WARNING),
                        pytest.param("local", marks=[pytest.mark.model, pytest.mark.slow])])
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    with asyncio.Runner() as runner:
        if request.param == "scripted":
            yield from _scripted(runner)
        elif request.param == "openai":
            yield from _openai(runner)
        elif request.param == "openai-responses":
            yield from _openai(runner, api="responses")
        elif request.param == "litellm":
            pytest.importorskip("rlm.backends.litellm_backend")
            yield from _litellm(runner)
        elif request.param == "anthropic":
            yield from _anthropic(runner)
        elif request.param == "gemini":
            yield from _gemini(runner)
        else:
            yield from _local(request, runner)


def usage(completion: Completion) -> tuple[int, int, float | None]:
    return (completion.input_tokens, completion.output_tokens, completion.cost_usd)


def test_complete_returns_text_usage_and_cost(subject):
    backend = subject.backend
    first = backend.complete(ask("Say hello."))
    assert isinstance(first, Completion) and isinstance(first.text, str) and first.text
    assert first.model == backend.model_name
    assert first.input_tokens > 0 and first.output_tokens > 0 and first.latency_s >= 0
    assert first.cost_usd is None or first.cost_usd >= 0
    # No counters kept: the same call again reports the same usage, not a running total.
    assert usage(backend.complete(ask("Say hello."))) == usage(first)


def test_estimates_cover_what_a_call_costs(subject):
    backend, request = subject.backend, ask("Say hello.")
    tokens = backend.estimate_tokens(request)
    assert isinstance(tokens, int) and tokens >= 1
    assert backend.estimate_tokens(ask("Say hello. " * 50)) > tokens
    estimate = backend.estimate_cost(request)
    assert backend.prices_known == (estimate is not None)
    completion = backend.complete(request)
    # An unknown price is unknown both before and after the call; a known one is not
    # exceeded by the call (the ledger reserves the estimate).
    assert (estimate is None) == (completion.cost_usd is None)
    if estimate is not None and completion.cost_usd is not None:
        assert completion.cost_usd <= estimate + 1e-12


def test_secrets_stay_out_of_the_description(subject):
    backend = subject.backend
    secrets = backend.secrets()
    assert isinstance(secrets, list) and all(isinstance(s, str) and s for s in secrets)
    shown = json.dumps(backend.describe())  # JSON-safe
    assert not any(secret in shown for secret in secrets)


def test_acomplete_is_the_async_twin(subject):
    backend = subject.fresh()
    request = ask("Say hello.")
    sync = backend.complete(request)

    async def twin() -> Completion:
        try:
            return await backend.acomplete(request)
        finally:
            await backend.aclose()

    async_ = subject.run(twin())
    assert isinstance(async_, Completion)
    assert (async_.text, async_.model, usage(async_)) == (sync.text, sync.model, usage(sync))


def test_close_is_idempotent(subject):
    backend = subject.fresh()
    with backend as entered:
        assert entered is backend
        assert backend.complete(ask("Say hello.")).text
    backend.close()
    backend.close()

    async def twice() -> None:
        await backend.aclose()
        await backend.aclose()

    subject.run(twice())


def test_calls_from_many_threads_are_each_answered(subject):
    backend = subject.backend
    prompts = [f"Say the number {n}." for n in range(4)]
    alone = [backend.complete(ask(prompt)) for prompt in prompts]
    together: dict[int, Completion] = {}

    def call(index: int) -> None:
        together[index] = backend.complete(ask(prompts[index]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Each thread gets the answer to its own request, as if it had been alone.
    assert [(together[i].text, usage(together[i])) for i in range(len(prompts))] == [
        (c.text, usage(c)) for c in alone]


@pytest.mark.parametrize("twin", ["complete", "acomplete"])
def test_a_cancel_already_set_stops_the_call(subject, twin):
    event = threading.Event()
    event.set()
    backend, request = subject.slow(event)
    started = time.monotonic()
    with pytest.raises(Cancelled):
        subject.call(backend, request, twin)
    assert time.monotonic() - started < CANCEL_BOUND_S


@pytest.mark.parametrize("twin", ["complete", "acomplete"])
def test_a_cancel_during_the_call_ends_it_early(subject, twin):
    event = threading.Event()
    backend, request = subject.slow(event)
    timer = threading.Timer(0.5, event.set)
    timer.start()
    started = time.monotonic()
    try:
        # A backend that waits on a reply gives up (``Cancelled``); one that generates
        # the text itself may stop and return what it has: either way the call ends now.
        subject.call(backend, request, twin)
    except Cancelled:
        pass
    finally:
        timer.cancel()
    elapsed = time.monotonic() - started
    assert event.is_set() and elapsed < CANCEL_BOUND_S


@pytest.mark.parametrize("twin", ["complete", "acomplete"])
def test_failures_are_backend_errors(subject, twin):
    backend, request = subject.failing()
    with pytest.raises(BackendError) as raised:
        subject.call(backend, request, twin)
    assert str(raised.value)  # says what went wrong
