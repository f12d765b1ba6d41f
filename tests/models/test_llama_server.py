"""The "openai" backend end to end against a REAL llama.cpp server (``llama_cpp.server``).

One server process (the default GGUF, ``n_ctx`` 4096, 2 threads) is shared by the file;
the test that kills a server mid-run starts a second one of its own.  The model is small
and slow (about 10 tokens/s on 2 cores), so every call is short and capped in tokens, and
only what is deterministic is asserted: types, token accounting against what the server
itself reported, ordering, error classes, timings bounds and trace completeness.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest

from rlm import (
    RLM,
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
    BadResponseError,
    CompletionRequest,
    MissingKeyError,
    RateLimitError,
    RLMResult,
)
from rlm.backends.openai_compat import OpenAIBackend
from rlm.backends.scripted import ScriptedBackend
from rlm.trace import load
from rlm.trace.events import TraceEvent
from tests.conftest import repl
from tests.fakes.fault_proxy import FaultProxy

MODEL = "local"
WORDS = ["ALPHA", "BRAVO", "CHARLIE", "DELTA"]
#: Generous limits: the machine may be shared, and a loaded CPU makes the model far slower.
CALL_TIMEOUT_S = 600.0
pytestmark = pytest.mark.timeout(900)


def ask(text: str, **kwargs) -> CompletionRequest:
    return CompletionRequest(messages=[{"role": "user", "content": text}], **kwargs)


def raw_chat(url: str, body: dict) -> dict:
    """POST ``body`` to the server by hand and return its JSON answer."""
    response = httpx.post(f"{url}/chat/completions", json=body, timeout=CALL_TIMEOUT_S)
    assert response.status_code == 200, response.text
    return response.json()


def chat_calls(proxy: FaultProxy) -> list:
    return [a for a in proxy.attempts if a.path.rstrip("/").endswith("/chat/completions")]


def haystack(chars: int = 3000) -> str:
    """About ``chars`` characters of filler with one line that gives the secret word."""
    lines = [f"line {i}: the weather report says nothing of interest today." for i in range(60)]
    lines.insert(31, "the secret word is PELICAN")
    text = "\n".join(lines)
    while len(text) < chars:
        text += "\nfiller: nothing to see here, keep reading."
    return text[: max(chars, text.index("PELICAN") + 10)]


class EventWatch:
    """A trace sink that signals when an event matching ``predicate`` arrives."""

    def __init__(self, predicate) -> None:
        self.predicate = predicate
        self.seen = threading.Event()
        self.events: list[TraceEvent] = []
        self._lock = threading.Lock()

    def emit(self, event: TraceEvent) -> None:
        with self._lock:
            self.events.append(event)
        if self.predicate(event):
            self.seen.set()

    def close(self) -> None:
        pass


@pytest.fixture
def proxy(llama_server):
    """A pass-through (until told otherwise) proxy in front of the shared server."""
    with FaultProxy(llama_server.root_url, timeout_s=CALL_TIMEOUT_S) as proxy:
        yield proxy


# -- 1. the full RLM loop -----------------------------------------------------------------------
def test_rlm_loop_against_the_real_server(llama_server, proxy, tmp_path):
    context = haystack(3000)
    assert len(context) >= 3000 and context.count("PELICAN") == 1
    rlm = RLM(backend="openai",
              backend_kwargs={"model": MODEL, "base_url": proxy.url,
                              "timeout_s": CALL_TIMEOUT_S, "extra_body": {"max_tokens": 48}},
              max_iterations=1, temperature=0.0, trace=tmp_path / "trace.jsonl")
    try:
        result = rlm.completion("What is the secret word? Search `context` with code, then "
                                "answer with FINAL(word).", context=context)
    finally:
        rlm.close()

    assert isinstance(result, RLMResult)
    assert result.stop_reason in ("final", "max_iterations")
    usage = result.usage[MODEL]
    assert usage.calls >= 1 and usage.input_tokens > 0 and usage.output_tokens > 0
    assert result.cost_usd == 0.0 and usage.cost_usd == 0.0  # a localhost server is free
    # every call went through the proxy: the usage is exactly what the server reported
    calls = chat_calls(proxy)
    assert len(calls) == usage.calls and all(c.status == 200 for c in calls)
    assert usage.input_tokens == sum(c.response["usage"]["prompt_tokens"] for c in calls)
    assert usage.output_tokens == sum(c.response["usage"]["completion_tokens"] for c in calls)
    assert all(c.body["max_tokens"] == 48 and c.body["model"] == MODEL for c in calls)
    assert "authorization" not in calls[0].headers  # no key for a localhost server
    # the context never went to the model: only its description did
    assert "PELICAN" not in calls[0].body["messages"][-1]["content"]
    # the trace agrees, and the file is complete
    traced = [e.data["input_tokens"] for node in result.trace.walk() for e in node.lm_calls]
    assert sum(traced) == usage.input_tokens
    root = load(tmp_path / "trace.jsonl")
    assert root.run_id == result.run_id and root.events[-1].type == "run_end"


# -- 2. a direct call: usage and latency --------------------------------------------------------
def test_direct_complete_parses_the_servers_usage(llama_server):
    messages = [{"role": "user", "content": "Name one primary color. One word."}]
    backend = OpenAIBackend(MODEL, base_url=llama_server.url, timeout_s=CALL_TIMEOUT_S)
    try:
        started = time.monotonic()
        completion = backend.complete(CompletionRequest(messages=messages, max_output_tokens=8,
                                                        temperature=0.0))
        wall = time.monotonic() - started
    finally:
        backend.close()
    # the same body, sent by hand: the server's own count of the prompt
    body = {"model": MODEL, "messages": messages, "max_tokens": 8, "temperature": 0.0}
    raw = raw_chat(llama_server.url, body)

    assert completion.text.strip()
    assert completion.input_tokens == raw["usage"]["prompt_tokens"] > 0
    assert 0 < completion.output_tokens <= 8 and 0 < raw["usage"]["completion_tokens"] <= 8
    assert completion.model == MODEL and completion.cost_usd == 0.0
    assert 0 < completion.latency_s <= wall


def test_async_complete_parses_the_servers_usage(llama_server):
    request = ask("Say yes.", max_output_tokens=4, temperature=0.0)

    async def run():
        backend = OpenAIBackend(MODEL, base_url=llama_server.url, timeout_s=CALL_TIMEOUT_S)
        try:
            return await backend.acomplete(request)
        finally:
            await backend.aclose()

    completion = asyncio.run(run())
    body = {"model": MODEL, "messages": request.messages, "max_tokens": 4, "temperature": 0.0}
    raw = raw_chat(llama_server.url, body)
    assert completion.input_tokens == raw["usage"]["prompt_tokens"] > 0
    assert 0 < completion.output_tokens <= 4 and completion.latency_s > 0


# -- 3. batched sub-calls -----------------------------------------------------------------------
def test_batched_sub_calls_through_the_real_server(llama_server, proxy):
    code = (f"words = {WORDS!r}\n"
            "answers = llm_query_batched(\n"
            "    [f'Reply with the single word {w} and nothing else.' for w in words])\n"
            "FINAL(answers)")
    root = ScriptedBackend([repl(code)])
    rlm = RLM(backend=root, sub_backend={"backend": "openai", "model": MODEL, "base_url": proxy.url,
                                  "timeout_s": CALL_TIMEOUT_S,
                                  "extra_body": {"max_tokens": 8, "temperature": 0.0}},
              max_iterations=2)
    try:
        result = rlm.completion("Ask the four questions.", context="unused")
    finally:
        rlm.close()

    assert result.stop_reason == "final", result.response
    answers = json.loads(result.response)
    assert len(answers) == 4
    assert all(a.strip() and not a.startswith("[query failed") for a in answers), answers
    # in order: slot i holds the answer the server gave to prompt i
    calls = {e.data["prompt"]: e.data["response"] for e in result.trace.lm_calls
             if e.data["purpose"] == "llm_query"}
    assert answers == [calls[f"Reply with the single word {w} and nothing else."]
                       for w in WORDS]
    [end] = [e for e in result.trace.events if e.type == "subcall_end"]
    assert end.data["count"] == 4 and end.data["failed"] == 0
    # the four requests were sent concurrently (the server itself answers one at a time)
    assert len(chat_calls(proxy)) == 4 and proxy.peak_in_flight >= 2
    usage = result.usage[MODEL]
    assert usage.calls == 4
    assert usage.input_tokens == sum(c.response["usage"]["prompt_tokens"]
                                     for c in chat_calls(proxy))


# -- 4. retries with backoff --------------------------------------------------------------------
def test_retries_429_drop_and_503_then_succeeds(llama_server, proxy):
    proxy.inject(429, headers={"Retry-After": "0"}).inject("drop").inject(503)
    backend = OpenAIBackend(MODEL, base_url=proxy.url, max_retries=3, backoff_s=0.05,
                            timeout_s=CALL_TIMEOUT_S)
    try:
        completion = backend.complete(ask("Say yes.", max_output_tokens=4))
    finally:
        backend.close()

    attempts = chat_calls(proxy)
    assert [a.status for a in attempts] == [429, None, 503, 200]
    assert [a.forwarded for a in attempts] == [False, False, False, True]
    assert proxy.pending == 0
    assert completion.text and completion.input_tokens == \
        attempts[-1].response["usage"]["prompt_tokens"]
    # exponential backoff: 0.05 * 2**n * U(0.75, 1.25) after the drop and the 503
    assert attempts[2].started - attempts[1].ended >= 0.05 * 2 * 0.75 - 0.01
    assert attempts[3].started - attempts[2].ended >= 0.05 * 4 * 0.75 - 0.01


def test_retries_give_up_with_the_last_status(llama_server, proxy):
    backend = OpenAIBackend(MODEL, base_url=proxy.url, max_retries=2, backoff_s=0.01,
                            timeout_s=CALL_TIMEOUT_S)
    try:
        proxy.inject(503, times=3)
        with pytest.raises(BadResponseError, match=r"HTTP 503 \(after 2 retries\)") as info:
            backend.complete(ask("Say yes.", max_output_tokens=4))
        assert info.value.status_code == 503
        proxy.inject(429, headers={"Retry-After": "0"}, times=3)
        with pytest.raises(RateLimitError, match=r"HTTP 429 \(after 2 retries\)"):
            backend.complete(ask("Say yes.", max_output_tokens=4))
        assert len(chat_calls(proxy)) == 6 and not any(a.forwarded for a in proxy.attempts)
        # the faults are spent: the same backend now reaches the real server
        assert backend.complete(ask("Say yes.", max_output_tokens=4)).text
    finally:
        backend.close()
    assert chat_calls(proxy)[-1].forwarded


# -- 5. timeouts --------------------------------------------------------------------------------
def test_a_timeout_raises_and_the_server_stays_usable(llama_server):
    prompt = "Count from 1 to 100, one number per line."
    impatient = OpenAIBackend(MODEL, base_url=llama_server.url, timeout_s=0.05)
    patient = OpenAIBackend(MODEL, base_url=llama_server.url, timeout_s=CALL_TIMEOUT_S)
    try:
        started = time.monotonic()
        with pytest.raises(BackendTimeoutError, match="no answer in time"):
            impatient.complete(ask(prompt, max_output_tokens=24))
        assert time.monotonic() - started < 5.0  # a timeout is not retried
        started = time.monotonic()
        with pytest.raises(BackendTimeoutError):  # the request's own limit wins too
            patient.complete(ask(prompt, max_output_tokens=24, timeout_s=0.05))
        assert time.monotonic() - started < 5.0
        # the server finishes the abandoned generations, then answers normally
        completion = patient.complete(ask("Say yes.", max_output_tokens=4))
        assert completion.text and completion.input_tokens > 0
    finally:
        impatient.close()
        patient.close()
    assert llama_server.alive


# -- 6. the server dies in the middle of a run --------------------------------------------------
#: How long a run may go on once its server is dead (retries and backoff included).
AFTER_KILL_BOUND_S = 30.0


class Killer:
    """Kills ``server`` ``delay_s`` after ``watch`` fires (or after 600 s whatever happens)."""

    def __init__(self, server, watch: EventWatch, delay_s: float) -> None:
        self.server, self.watch, self.delay_s = server, watch, delay_s
        self.killed_at: float | None = None
        self.thread = threading.Thread(target=self._run, name="kill-llama-server", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        if self.watch.seen.wait(CALL_TIMEOUT_S):
            time.sleep(self.delay_s)
        self.server.kill()
        self.killed_at = time.monotonic()

    def join(self) -> None:
        self.thread.join(timeout=CALL_TIMEOUT_S + 10)
        assert not self.thread.is_alive() and self.killed_at is not None


def test_server_killed_during_sub_calls(fresh_llama_server, tmp_path):
    """The root is scripted; its code's llm_query calls fail once the server is gone."""
    code = ("answers = []\n"
            "for i in range(12):\n"
            "    answers.append(llm_query(f'Write the numbers {i} to {i + 30}.'))\n"
            "FINAL(answers)")
    root = ScriptedBackend([repl(code), repl("FINAL('the server went away')")])
    # once the first sub-call is answered, kill while the second is being generated
    watch = EventWatch(lambda e: e.type == "lm_call" and e.data["purpose"] == "llm_query")
    trace_path = tmp_path / "trace.jsonl"
    rlm = RLM(backend=root, sub_backend={"backend": "openai", "model": MODEL,
                                         "base_url": fresh_llama_server.url,
                                         "timeout_s": CALL_TIMEOUT_S, "max_retries": 2,
                                         "backoff_s": 0.1, "extra_body": {"max_tokens": 24}},
              max_iterations=3, trace=[trace_path, watch])
    killer = Killer(fresh_llama_server, watch, 0.5)
    try:
        result = rlm.completion("Ask many questions.", context="unused")
    finally:
        ended = time.monotonic()
        rlm.close()
        killer.join()
    assert ended - killer.killed_at < AFTER_KILL_BOUND_S  # nothing hangs on a dead server
    assert not fresh_llama_server.alive

    # what the library does: the failed llm_query is an error of the model's code, fed
    # back to the model, which then answers; the run itself does not raise
    assert result.stop_reason == "final" and result.response == "the server went away"
    [first, second] = result.trace.code_executions
    assert "BackendConnectionError" in first.data["error"] and first.data["final"] is None
    assert second.data["error"] is None and second.data["final"]["source"] == "FINAL"
    sub_calls = [e for e in result.trace.lm_calls if e.data["purpose"] == "llm_query"]
    assert sub_calls[0].data.get("error") is None and sub_calls[0].data["output_tokens"] > 0
    assert sub_calls[-1].data["error"]["type"] == "BackendConnectionError"
    assert 2 <= len(sub_calls) < 12
    usage = result.usage[MODEL]
    assert usage.calls == len(sub_calls) - 1  # the failed call is not charged
    # the trace file is complete and readable
    tree = load(trace_path)
    assert tree.run_id == result.run_id and tree.events[-1].type == "run_end"
    assert tree.response == "the server went away"


def test_server_killed_during_a_root_turn(fresh_llama_server, tmp_path):
    """The openai backend is the root: the run raises, with the partial result attached."""
    watch = EventWatch(lambda e: e.type == "run_start" and e.depth == 0)
    trace_path = tmp_path / "trace.jsonl"
    rlm = RLM(backend="openai",
              backend_kwargs={"model": MODEL, "base_url": fresh_llama_server.url,
                              "timeout_s": CALL_TIMEOUT_S, "max_retries": 2, "backoff_s": 0.1,
                              "extra_body": {"max_tokens": 200}},
              max_iterations=3, trace=[trace_path, watch])
    # the first turn (a prompt of ~500 tokens, then up to 200 tokens out) takes many seconds
    killer = Killer(fresh_llama_server, watch, 1.5)
    try:
        with pytest.raises(BackendError) as info:
            rlm.completion("Print the first line of the context, then give it as FINAL.",
                           context=haystack(3000))
    finally:
        ended = time.monotonic()
        rlm.close()
        killer.join()
    assert ended - killer.killed_at < AFTER_KILL_BOUND_S  # nothing hangs on a dead server
    assert not fresh_llama_server.alive

    exc = info.value
    assert isinstance(exc, BackendConnectionError), repr(exc)
    partial = exc.partial
    assert isinstance(partial, RLMResult) and partial.stop_reason == "error"
    assert partial.run_id == exc.run_id and partial.trace.end is not None
    assert partial.trace.end.data["error"]["type"] == "BackendConnectionError"
    assert partial.usage.get(MODEL) is None or partial.usage[MODEL].calls == 0
    tree = load(trace_path)
    assert tree.run_id == partial.run_id and tree.events[-1].type == "run_end"
    [call] = tree.lm_calls
    assert call.data["error"]["type"] == "BackendConnectionError"


# -- 7. keys ------------------------------------------------------------------------------------
def test_a_localhost_server_needs_no_key(llama_server, proxy, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend = OpenAIBackend(MODEL, base_url=proxy.url, timeout_s=CALL_TIMEOUT_S)
    try:
        assert backend.api_key is None and backend.secrets() == []
        assert backend.complete(ask("Say yes.", max_output_tokens=4)).text
    finally:
        backend.close()
    [attempt] = chat_calls(proxy)
    assert attempt.status == 200 and "authorization" not in attempt.headers
    # the same backend for a remote host wants a key (and fails before any request)
    with pytest.raises(MissingKeyError, match="OPENAI_API_KEY"):
        OpenAIBackend(MODEL, base_url="https://api.example.invalid/v1")
