"""Faults of the LM provider, end to end through ``RLM`` and the ``openai`` backend over real
HTTP on 127.0.0.1: the server killed (a process of its own, SIGKILL), a connection dropped
by the fault proxy, a server that hangs, garbage replies, hostile numbers, a trace file on
a full disk.  Each run must end cleanly (a result or an rlm error with ``partial``), in a
bounded time, with a complete trace."""

from __future__ import annotations

import asyncio
import math
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlm import RLM
from rlm.errors import (
    BackendConnectionError,
    BackendTimeoutError,
    BadResponseError,
)
from tests.fakes.fault_proxy import FaultProxy
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.silent_server import SilentServer
from tests.faults.support import after, bounded, check_trace, code_execs, repl

ROOT = Path(__file__).resolve().parents[2]
#: Small retry settings, so that a dead provider is given up on quickly.
RETRIES = 2
FAST = {"model": "fake", "max_retries": RETRIES, "backoff_s": 0.05, "timeout_s": 5.0}


def model(url: str, trace: Path, **kwargs: Any) -> RLM:
    backend_kwargs = {**FAST, "base_url": url, **kwargs.pop("backend_kwargs", {})}
    return RLM(backend="openai", backend_kwargs=backend_kwargs, trace=trace,
               max_iterations=5, **kwargs)


def lm_calls(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["type"] == "lm_call"]


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(reply=repl("FINAL('unexpected')")) as server:
        yield server


# -- the provider killed ------------------------------------------------------------------------
class ServerProcess:
    """``python -m tests.fakes.openai_server REPLY...`` in a process of its own."""

    def __init__(self, *replies: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.openai_server", *replies], cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self.expect("url").split()[1]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def expect(self, prefix: str, timeout_s: float = 30.0) -> str:
        while True:
            line = self.lines.get(timeout=timeout_s)
            if line.startswith(prefix):
                return line

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.mark.parametrize("when", ["mid-request", "between-requests"])
def test_provider_process_killed(when, tmp_path):
    """The provider's process is SIGKILLed after its first reply: while it holds the second
    request (the connection is reset under it) or before the second one is sent (refused)."""
    first = repl("import time\ntime.sleep(0.5)\nx = 1")  # time for the kill between requests
    server = ServerProcess(first)
    try:
        wait_for = "received 2" if when == "mid-request" else "answered 1"
        trigger = after(lambda: _saw(server, wait_for), server.kill, delay_s=0.0)
        rlm = model(server.url, tmp_path / "trace.jsonl")
        with rlm:
            ran = bounded(lambda: rlm.completion("the input"), limit_s=15)
        trigger.check()
    finally:
        server.close()
    assert isinstance(ran.error, BackendConnectionError), ran
    assert ran.error.partial.iterations == 2
    assert ran.error.partial.usage["fake"].calls == 1  # the one answered call is kept
    events = check_trace(tmp_path / "trace.jsonl", ran)
    calls = lm_calls(events)
    assert [c.get("error", {}).get("type") for c in calls] == [None, "BackendConnectionError"]
    assert code_execs(events)[0]["error"] is None


def _saw(server: ServerProcess, prefix: str) -> bool:
    try:
        while True:
            if server.lines.get_nowait().startswith(prefix):
                return True
    except queue.Empty:
        return False


def test_fault_proxy_drops_every_connection_after_the_first_reply(fake, tmp_path):
    with FaultProxy(upstream=f"http://127.0.0.1:{fake.port}", timeout_s=10) as proxy:
        def reply(body: dict[str, Any]) -> str:
            proxy.inject("drop", times=20)  # from now on the provider is unreachable
            return repl("x = 1")

        fake.reply = reply
        rlm = model(proxy.url, tmp_path / "trace.jsonl")
        with rlm:
            ran = bounded(lambda: rlm.completion("the input"), limit_s=10)
        statuses = [a.status for a in proxy.attempts]
    assert isinstance(ran.error, BackendConnectionError), ran
    assert statuses == [200] + [None] * (RETRIES + 1)  # retried, then given up
    assert len(fake.requests) == 1
    check_trace(tmp_path / "trace.jsonl", ran)


# -- the provider hanging --------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["never-reads", "reads-never-answers"])
def test_hanging_provider_times_out(kind, fake, tmp_path):
    timeout_s = 1.0
    with SilentServer() as silent:
        if kind == "never-reads":
            url = silent.url
        else:
            fake.enqueue(delay_s=120)
            url = fake.url
        rlm = model(url, tmp_path / "trace.jsonl", backend_kwargs={"timeout_s": timeout_s})
        with rlm:
            ran = bounded(lambda: rlm.completion("the input"), limit_s=timeout_s + 4)
        accepted = silent.accepted
    assert isinstance(ran.error, BackendTimeoutError), ran
    assert ran.elapsed_s >= timeout_s * 0.9
    assert (accepted if kind == "never-reads" else len(fake.requests)) == 1  # no retry
    events = check_trace(tmp_path / "trace.jsonl", ran)
    assert lm_calls(events)[0]["error"]["type"] == "BackendTimeoutError"


def complete(rlm: RLM, mode: str) -> Any:
    """One completion, closing ``rlm`` after it: ``completion`` or, for ``"async"``,
    ``acompletion`` in an event loop of its own."""
    if mode == "sync":
        with rlm:
            return rlm.completion("the input")

    async def main() -> Any:
        async with rlm:
            return await rlm.acompletion("the input")

    return asyncio.run(main())


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_hanging_provider_under_max_timeout_ends_with_stop_reason_timeout(mode, tmp_path):
    """The tree's ``max_timeout`` runs out while the provider hangs: the run returns with
    ``stop_reason="timeout"`` (limits end a run with a result, docs/api.md), at the limit."""
    with SilentServer() as silent:
        rlm = model(silent.url, tmp_path / "trace.jsonl", max_timeout=2.0,
                    backend_kwargs={"timeout_s": 60.0})
        ran = bounded(lambda: complete(rlm, mode), limit_s=6)
    assert ran.result is not None, ran.error
    assert ran.result.stop_reason == "timeout"
    assert ran.elapsed_s > 1.8
    events = check_trace(tmp_path / "trace.jsonl", ran)
    assert lm_calls(events)[-1]["error"]["type"] == "Cancelled"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_cancel_while_the_provider_hangs(mode, fake, tmp_path):
    """``RLM.cancel()`` while a turn's request hangs: the run returns ``cancelled`` at once,
    not after the backend's timeout (the backend watches ``request.cancel``)."""
    fake.enqueue(delay_s=120)
    rlm = model(fake.url, tmp_path / "trace.jsonl", backend_kwargs={"timeout_s": 60.0})
    trigger = after(lambda: len(fake.requests) >= 1, rlm.cancel, delay_s=0.3)
    ran = bounded(lambda: complete(rlm, mode), limit_s=10)
    cancelled_at = trigger.check()
    assert ran.result is not None, ran.error
    assert ran.result.stop_reason == "cancelled"
    assert ran.ended_at - cancelled_at < 2.0, ran.ended_at - cancelled_at
    events = check_trace(tmp_path / "trace.jsonl", ran)
    assert lm_calls(events)[-1]["error"]["type"] == "Cancelled"


# -- garbage replies ----------------------------------------------------------------------------
GARBAGE = {
    "not-json": "this is not JSON {",
    "binary": b"\xff\xfe\x00garbage",
    "html": "<html><body>502 Bad Gateway</body></html>",
    "json-null": "null",
    "json-list": [1, 2, 3],
    "wrong-shape": {"foo": "bar"},
    "empty-choices": {"choices": []},
    "choice-not-object": {"choices": ["text"]},
    "no-message": {"choices": [{"index": 0}]},
    "content-not-text": {"choices": [{"message": {"content": {"nested": True}}}]},
    "usage-not-object": {"choices": [{"message": {"content": "hi"}}], "usage": [1, 2]},
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_reply_mid_run_is_a_clean_error(name, fake, tmp_path):
    fake.enqueue(repl("x = 1"))
    fake.enqueue(body=GARBAGE[name])  # a 200 with this body, on the second turn
    rlm = model(fake.url, tmp_path / "trace.jsonl")
    with rlm:
        ran = bounded(lambda: rlm.completion("the input"), limit_s=5)
    assert isinstance(ran.error, BadResponseError), ran
    assert "malformed response" in str(ran.error)
    assert len(fake.requests) == 2  # a malformed 200 is not retried
    assert ran.error.partial.usage["fake"].calls == 1
    check_trace(tmp_path / "trace.jsonl", ran)


def test_garbage_reply_to_a_sub_call_reaches_the_code_and_the_run_goes_on(fake, tmp_path):
    """A malformed reply to ``llm_query`` does not end the run: the model's code gets an
    ``LMQueryError`` and the next turn answers."""
    ask = ("try:\n    llm_query('a question')\nexcept Exception as exc:\n"
           "    print('caught', type(exc).__name__)")
    fake.enqueue(repl(ask))
    fake.enqueue(body={"choices": []})  # the sub-call's reply
    fake.enqueue(repl("FINAL('survived')"))
    rlm = model(fake.url, tmp_path / "trace.jsonl")
    with rlm:
        ran = bounded(lambda: rlm.completion("the input"), limit_s=5)
    assert ran.result is not None, ran.error
    assert (ran.result.stop_reason, ran.result.response) == ("final", "survived")
    events = check_trace(tmp_path / "trace.jsonl", ran)
    assert "caught LMQueryError" in code_execs(events)[0]["stdout"]
    sub = [c for c in lm_calls(events) if c["purpose"] == "llm_query"]
    assert [c["error"]["type"] for c in sub] == ["BadResponseError"]


@pytest.mark.parametrize("status", [500, 503])
def test_garbage_error_status_is_retried_then_a_clean_error(status, fake, tmp_path):
    fake.enqueue(status=status, body="<html>upstream exploded</html>", times=RETRIES + 1)
    rlm = model(fake.url, tmp_path / "trace.jsonl")
    with rlm:
        ran = bounded(lambda: rlm.completion("the input"), limit_s=5)
    assert isinstance(ran.error, BadResponseError), ran
    assert f"HTTP {status}" in str(ran.error)
    assert len(fake.requests) == RETRIES + 1
    check_trace(tmp_path / "trace.jsonl", ran)


# -- hostile numbers ---------------------------------------------------------------------------
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("usage", [(-5, 10), (10, -1), (NAN, 1), (1, INF), (-INF, 1),
                                   (10**30, 1), (1.5, 1), ("12", 1), (True, 1)],
                         ids=str)
def test_hostile_usage_is_a_clean_error_and_never_charged(usage, fake, tmp_path):
    fake.enqueue(repl("x = 1"))
    fake.enqueue(repl("FINAL(x)"), usage=usage)
    rlm = model(fake.url, tmp_path / "trace.jsonl", max_budget=1.0, max_tokens=100_000,
                backend_kwargs={"price_per_mtok": (1.0, 2.0)})
    with rlm:
        ran = bounded(lambda: rlm.completion("the input"), limit_s=5)
    assert isinstance(ran.error, BadResponseError), ran
    assert "impossible usage" in str(ran.error)
    partial = ran.error.partial
    assert partial.usage["fake"].calls == 1  # only the sound call is counted
    for number in (partial.cost_usd, partial.input_tokens, partial.output_tokens):
        assert math.isfinite(number) and number >= 0, number
    events = check_trace(tmp_path / "trace.jsonl", ran)
    bad = lm_calls(events)[-1]
    assert (bad["input_tokens"], bad["output_tokens"], bad["cost_usd"]) == (0, 0, 0.0)


@pytest.mark.parametrize(("usage", "limits", "stop_reason"), [
    ((10**8, 10), {"max_budget": 0.5}, "budget"),
    ((10**8, 10), {"max_tokens": 10_000}, "tokens"),
    ((999_999_999, 1), {"max_tokens": 10**6}, "tokens"),
])
def test_huge_but_valid_usage_still_stops_at_the_budget(usage, limits, stop_reason, fake,
                                                         tmp_path):
    fake.enqueue(repl("x = 1"), usage=usage)
    fake.enqueue(repl("FINAL('over budget')"))
    rlm = model(fake.url, tmp_path / "trace.jsonl", backend_kwargs={"price_per_mtok": (1.0, 1.0)},
                **limits)
    with rlm:
        ran = bounded(lambda: rlm.completion("the input"), limit_s=5)
    assert ran.result is not None, ran.error
    assert ran.result.stop_reason == stop_reason
    assert len(fake.requests) == 1  # the next turn was refused
    check_trace(tmp_path / "trace.jsonl", ran)


def test_a_hostile_cost_field_is_ignored(fake, tmp_path):
    fake.enqueue(repl("FINAL(1)"), usage={"prompt_tokens": 100, "completion_tokens": 10,
                                          "cost": -1e9})
    rlm = model(fake.url, tmp_path / "trace.jsonl", max_budget=0.5,
                backend_kwargs={"price_per_mtok": (1.0, 2.0)})
    with rlm:
        ran = bounded(lambda: rlm.completion("the input"), limit_s=5)
    assert ran.result is not None and ran.result.stop_reason == "final", ran
    assert ran.result.cost_usd == pytest.approx((100 * 1.0 + 10 * 2.0) / 1e6)
    check_trace(tmp_path / "trace.jsonl", ran)


# -- the trace's disk full -------------------------------------------------------------------
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_trace_file_on_a_full_disk_does_not_break_the_run(scripted):
    backend = scripted([repl("FINAL('answered')")])
    rlm = RLM(backend=backend, trace="/dev/full")  # every write: ENOSPC
    ran = bounded(lambda: rlm.completion("the input"), limit_s=5)
    assert ran.result is not None and ran.result.response == "answered", ran
    assert ran.result.trace.run_id == ran.result.run_id  # the trace in memory is whole
