"""Limits are one account for the whole call tree; runs stop cleanly with a stop_reason."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from rlm import RLM
from rlm.backends.scripted import ScriptedBackend
from rlm.types import CompletionRequest
from tests.conftest import repl


def loop_forever(messages, depth):
    return repl("x = 1")


def test_max_iterations_stops_and_extracts_an_answer():
    def reply(messages, depth):
        if "no turns left" in messages[-1]["content"]:
            return "best guess: 7"
        return repl("print('still looking')")

    result = RLM(backend="scripted", backend_kwargs={"responses": reply},
                 max_iterations=3).completion("c")
    assert (result.stop_reason, result.iterations) == ("max_iterations", 3)
    assert result.response == "best guess: 7" and result.answer_source == "extract"


def test_max_iterations_without_extract_returns_last_prose():
    result = RLM(backend="scripted",
                 backend_kwargs={"responses": lambda m, d: "thinking...\n" + repl("x = 1")},
                 max_iterations=2, extract_on_limit=False).completion("c")
    assert (result.stop_reason, result.response) == ("max_iterations", "thinking...")


def test_iterations_are_shared_by_children():
    def reply(messages, depth):
        if depth == 0:
            return repl("r = rlm_query('child')\nprint(r)")
        return repl("y = 2")  # the child never finishes

    result = RLM(backend="scripted", backend_kwargs={"responses": reply}, max_depth=2,
                 max_iterations=6, extract_on_limit=False).completion("c")
    turns = sum(1 for n in result.trace.walk() for e in n.lm_calls if e.data["purpose"] == "turn")
    assert turns == 6 and result.stop_reason == "max_iterations"


def test_budget_counts_children_and_parallel_children_cannot_overrun():
    def reply(messages, depth):
        if depth == 0:
            return repl("rs = rlm_query_batched(['c'] * 8)\nprint(rs)")
        if len(messages) > 1:  # a child RLM: spend on sub-calls, never finish
            return repl("llm_query_batched(['leaf'] * 4)")
        return "leaf"

    result = RLM(backend="scripted",
                 backend_kwargs={"responses": reply, "cost_per_call": 0.1, "latency_s": 0.01},
                 max_depth=2, max_budget=2.0).completion("c")
    assert result.stop_reason == "budget"
    assert result.cost_usd <= 2.0 + 1e-9
    assert result.cost_usd == pytest.approx(sum(u.cost_usd for u in result.usage.values()))
    child_cost = sum(n.cost_usd for n in result.trace.children)
    assert child_cost > 0 and result.trace.cost_usd == pytest.approx(result.cost_usd)


def test_timeout_stops_in_flight_batch_without_waiting():
    def reply(messages, depth):
        if depth == 0:
            return repl("rs = llm_query_batched(['q'] * 32)\nprint(rs[0])")
        return "late"

    started = time.monotonic()
    result = RLM(backend="scripted", backend_kwargs={"responses": reply, "latency_s": 5.0},
                 max_timeout=0.5, max_concurrency=4).completion("c")
    assert result.stop_reason == "timeout"
    assert time.monotonic() - started < 3.0


class EstimatesKept(ScriptedBackend):
    """A scripted backend that keeps the token estimate of every call it is asked to price."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.estimates: list[int] = []

    def estimate_tokens(self, request: CompletionRequest) -> int:
        estimate = super().estimate_tokens(request)
        self.estimates.append(estimate)
        return estimate


def test_max_tokens_stops_the_run_at_the_first_call_that_would_not_fit():
    backend = EstimatesKept(loop_forever)
    result = RLM(backend=backend, max_tokens=3000, extract_on_limit=False).completion("c" * 2000)
    assert result.stop_reason == "tokens"
    calls = [event.data for event in result.trace.lm_calls]
    # The scripted backend charges exactly the input it estimated (4 characters a token), so
    # the ledger admits a call only while the tokens used and its input fit in max_tokens.
    assert [call["input_tokens"] for call in calls] == backend.estimates[:len(calls)]
    assert len(backend.estimates) == len(calls) + 1  # one more call was priced, and refused
    total = result.input_tokens + result.output_tokens
    assert total == sum(call["input_tokens"] + call["output_tokens"] for call in calls)
    assert total - calls[-1]["output_tokens"] <= 3000  # the last call started within the limit
    assert total + backend.estimates[-1] > 3000  # the refused one would not have fit


def test_max_errors_stops_the_run():
    result = RLM(backend="scripted",
                 backend_kwargs={"responses": lambda m, d: repl("1 / 0")},
                 max_errors=2).completion("c")
    assert (result.stop_reason, result.iterations) == ("errors", 3)


def test_cancel_from_another_thread():
    rlm = RLM(backend="scripted", backend_kwargs={"responses": loop_forever, "latency_s": 0.05},
              max_iterations=10_000)
    threading.Timer(0.3, rlm.cancel).start()
    started = time.monotonic()
    result = rlm.completion("c")
    assert result.stop_reason == "cancelled" and time.monotonic() - started < 3


def test_a_call_that_cannot_fit_is_not_started():
    backend_kwargs = {"responses": loop_forever, "cost_per_call": 0.4}
    result = RLM(backend="scripted", backend_kwargs=backend_kwargs, max_budget=1.0,
                 extract_on_limit=False).completion("c")
    assert result.usage["scripted"].calls == 2  # a third call (1.2 > 1.0) never started
    assert result.stop_reason == "budget"
