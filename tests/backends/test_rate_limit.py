"""The rate limiter a backend shares with the whole call tree: rpm / tpm turns, one shared
pause after a 429, waits bounded by the deadline (unit tests on a fake clock, then the
openai backend against the fake server, alone and inside an RLM run)."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from rlm import RLM
from rlm.backends.openai_compat import OpenAIBackend
from rlm.backends.rate_limit import RateLimiter
from rlm.errors import Cancelled, ConfigError, RateLimitError
from rlm.types import CompletionRequest
from tests.conftest import repl
from tests.fakes.openai_server import FakeOpenAIServer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ask(text: str = "hi", **kwargs) -> CompletionRequest:
    return CompletionRequest(messages=[{"role": "user", "content": text}], **kwargs)


# -- the limiter on its own -------------------------------------------------------------------
def test_rpm_spaces_requests_evenly():
    clock = Clock()
    limiter = RateLimiter(rpm=60, clock=clock)
    waits = [limiter.reserve(0, deadline=1e9) for _ in range(3)]
    assert waits == [0.0, 1.0, 2.0]
    clock.now += 10  # idle time is not saved up into a burst
    assert limiter.reserve(0, deadline=1e9) == 0.0
    assert limiter.reserve(0, deadline=1e9) == 1.0


def test_tpm_bucket_holds_a_minute_and_refills():
    clock = Clock()
    limiter = RateLimiter(tpm=600, clock=clock)  # 10 tokens a second
    assert limiter.reserve(600, deadline=1e9) == 0.0  # a full minute's worth at once
    assert limiter.reserve(60, deadline=1e9) == pytest.approx(6.0)
    limiter.settle(60, 0)  # that one used nothing: its tokens come back
    clock.now += 1
    assert limiter.reserve(10, deadline=1e9) == pytest.approx(0.0)


def test_a_turn_past_the_deadline_is_not_booked():
    clock = Clock()
    limiter = RateLimiter(rpm=60, clock=clock)
    assert limiter.reserve(0, deadline=clock.now + 5) == 0.0
    assert limiter.reserve(0, deadline=clock.now + 0.5) is None  # would start at +1
    assert limiter.reserve(0, deadline=clock.now + 5) == 1.0  # the refused one took no slot


def test_a_pause_holds_everyone_and_the_latest_end_stands():
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    assert not limiter.limited and limiter.reserve(0, deadline=1e9) == 0.0
    limiter.pause(2.0)
    limiter.pause(1.0)  # an earlier end does not shorten the pause
    assert limiter.not_before == clock.now + 2.0 and limiter.pauses == 1
    assert limiter.reserve(0, deadline=1e9) == 2.0
    assert limiter.reserve(0, deadline=clock.now + 1) is None


@pytest.mark.parametrize("kwargs", [{"rpm": 0}, {"tpm": -5}, {"rpm": float("nan")},
                                    {"rpm": True}, {"tpm": "100"}])
def test_bad_limits_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        OpenAIBackend(model="m", base_url="http://127.0.0.1:1/v1", **kwargs)


def test_wait_turn_past_the_deadline_raises_and_watches_cancel():
    limiter = RateLimiter()
    limiter.pause(30.0)
    with pytest.raises(RateLimitError, match="retry-after pause leaves no time"):
        limiter.wait_turn("x", 0, time.monotonic() + 1.0, None)
    cancel = threading.Event()
    threading.Timer(0.1, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled, match="rate-limit turn"):
        limiter.wait_turn("x", 0, time.monotonic() + 60.0, cancel)
    assert time.monotonic() - started < 2.0


# -- the openai backend, many threads at once ------------------------------------------------
def _run_threads(backend: OpenAIBackend, count: int, stagger_s: float = 0.0) -> list[str]:
    texts: list[str] = [""] * count
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def call(i: int) -> None:
        barrier.wait()
        time.sleep(i * stagger_s)
        try:
            texts[i] = backend.complete(ask(f"question {i}")).text
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    return texts


def test_20_concurrent_calls_refused_once_retry_together_after_the_wait():
    with FakeOpenAIServer(reply="ok") as fake, \
            OpenAIBackend(model="m", base_url=fake.url, backoff_s=30.0) as backend:
        fake.refuse_each_once("0.4")
        assert _run_threads(backend, 20) == ["ok"] * 20
        requests = sorted(fake.requests, key=lambda r: r.received_at)
    assert len(requests) == 40  # one 429 and one retry each: no storm of re-tries
    first = requests[0].received_at
    early = [r for r in requests if r.received_at < first + 0.35]
    late = [r for r in requests if r.received_at >= first + 0.35]
    # before the wait ended, each call was sent at most once (a thread that started after
    # the first 429 came back waited for the pause before its first try)
    contents = [r.body["messages"][0]["content"] for r in early]
    assert len(contents) == len(set(contents)) and all(
        r.received_at < first + 0.2 for r in early)
    # every call went out again (or for the first time) after the wait, none in between
    assert {r.body["messages"][0]["content"] for r in late} == {
        f"question {i}" for i in range(20)}


def test_a_429_pauses_calls_that_start_later_too():
    with FakeOpenAIServer(reply="ok") as fake, \
            OpenAIBackend(model="m", base_url=fake.url, backoff_s=30.0) as backend:
        fake.enqueue(status=429, headers={"Retry-After": "0.8"})  # the first request only
        first = threading.Thread(target=backend.complete, args=(ask("first"),))
        first.start()
        while backend.limiter.pauses == 0:  # its 429 came back: the pause is on
            time.sleep(0.005)
        paused_at = time.time()
        _run_threads(backend, 9, stagger_s=0.03)  # the others start during the pause
        first.join(10)
        requests = sorted(fake.requests, key=lambda r: r.received_at)
        assert backend.limiter.pauses == 1
    assert len(requests) == 11
    # nothing reached the server while the pause ran: every later call waited it out
    assert all(r.received_at >= paused_at + 0.7 for r in requests[1:])


def test_the_pause_does_not_outlast_the_deadline():
    with FakeOpenAIServer() as fake, \
            OpenAIBackend(model="m", base_url=fake.url, backoff_s=0.01) as backend:
        fake.enqueue(status=429, headers={"Retry-After": "5"})
        started = time.monotonic()
        with pytest.raises(RateLimitError, match="HTTP 429"):
            backend.complete(ask(timeout_s=1.0))
        assert time.monotonic() - started < 0.9  # raised at once, not after 5 s
        backend.limiter.pause(5.0)  # a pause another call set: the same bound applies
        with pytest.raises(RateLimitError, match="leaves no time"):
            backend.complete(ask(timeout_s=1.0))
        assert len(fake.requests) == 1


def test_async_calls_share_the_pause():
    import asyncio

    with FakeOpenAIServer(reply="ok") as fake, \
            OpenAIBackend(model="m", base_url=fake.url, backoff_s=30.0) as backend:
        fake.refuse_each_once("0.3")

        async def main() -> list[str]:
            try:
                replies = await asyncio.gather(*(backend.acomplete(ask(f"q{i}"))
                                                 for i in range(5)))
                return [r.text for r in replies]
            finally:
                await backend.aclose()

        assert asyncio.run(main()) == ["ok"] * 5
        requests = sorted(fake.requests, key=lambda r: r.received_at)
    assert len(requests) == 10
    assert all(r.received_at >= requests[0].received_at + 0.25 for r in requests[5:])


# -- inside a run: a batch of sub-calls shares the sub backend's limiter ----------------------
def test_rpm_spaces_a_batch_of_sub_calls():
    code = repl("out = llm_query_batched([f'item {i}' for i in range(8)])\n"
                "FINAL(str(len(out)))")
    with FakeOpenAIServer(reply=lambda body: code if body["model"] == "root" else "x") \
            as fake:
        options = {"backend": "openai", "base_url": fake.url}
        with RLM(backend={**options, "model": "root"},
                 sub_backend={**options, "model": "sub", "rpm": 600},  # one per 0.1 s
                 max_iterations=2) as rlm:
            result = rlm.completion("Go.")
        subs = sorted(r.received_at for r in fake.requests if r.body["model"] == "sub")
    assert result.response == "8" and len(subs) == 8
    gaps = [b - a for a, b in itertools.pairwise(subs)]
    assert subs[-1] - subs[0] >= 0.65 and min(gaps) >= 0.04, gaps
