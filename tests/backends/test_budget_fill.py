"""What a call reserves under ``max_budget``: the reply's cap when it has one, else a
length learned from the run's own replies; a call short of room only because of calls in
flight waits for their refunds.  A budget that fits N calls makes about N, never more."""

from __future__ import annotations

import threading
import time

import pytest

from rlm import RLM
from rlm.core.limits import Budget, Limits
from rlm.errors import BudgetExceeded, Cancelled
from rlm.types import Completion
from tests.conftest import repl
from tests.fakes.openai_server import FakeOpenAIServer

PRICE = (1.0, 4.0)
PROMPT = "Name one colour. " + "lorem ipsum " * 160  # about 500 tokens, a 1-token reply


def charge(budget: Budget, reservation, cost: float, output_tokens: int = 1,
           key: str = "m") -> None:
    budget.commit(reservation, Completion(text="x", model=key, input_tokens=1,
                                          output_tokens=output_tokens, cost_usd=cost), key)


def test_the_output_allowance_is_learned_per_model():
    budget = Budget(Limits())
    assert budget.output_allowance("m") == 1024  # nothing seen yet
    charge(budget, budget.reserve(0.0, 0), 0.0, output_tokens=10)
    assert budget.output_allowance("m") == 128  # four times the longest reply, at least 128
    charge(budget, budget.reserve(0.0, 0), 0.0, output_tokens=200)
    assert budget.output_allowance("m") == 800
    charge(budget, budget.reserve(0.0, 0), 0.0, output_tokens=5000)
    assert budget.output_allowance("m") == 1024  # never more than before
    assert budget.output_allowance("other") == 1024
    budget.close()


def test_a_call_short_of_room_held_in_flight_waits_for_the_refund():
    budget = Budget(Limits(max_budget=1.0))
    first = budget.reserve(0.8, 0)
    with pytest.raises(BudgetExceeded):
        budget.reserve(0.5, 0)  # without wait: refused at once (and the tree goes on)
    assert budget.tripped is None
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(budget.reserve(0.5, 0, wait=True)))
    waiter.start()
    time.sleep(0.3)
    assert not got  # still waiting on the call in flight
    charge(budget, first, 0.1)  # it cost far less than it reserved: the refund makes room
    waiter.join(5)
    assert got and budget.cost_usd == pytest.approx(0.1)
    budget.close()


def test_a_waiting_call_is_refused_once_nothing_is_in_flight():
    budget = Budget(Limits(max_budget=1.0))
    first = budget.reserve(0.8, 0)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            budget.reserve(0.5, 0, wait=True)
        except BaseException as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.1)
    assert waiter.is_alive()  # waiting: the call in flight may still refund
    charge(budget, first, 0.7)  # spent 0.7: 0.5 more can never fit
    waiter.join(5)
    assert errors and isinstance(errors[0], BudgetExceeded)
    assert budget.cost_usd == pytest.approx(0.7)
    budget.close()


def test_a_waiting_call_ends_when_the_tree_stops():
    budget = Budget(Limits(max_budget=1.0))
    budget.reserve(0.8, 0)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            budget.reserve(0.5, 0, wait=True)
        except BaseException as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.1)
    budget.cancel()
    waiter.join(5)
    assert not waiter.is_alive() and isinstance(errors[0], Cancelled)
    budget.close()


def _code(calls: int, batch: bool) -> str:
    prompts = f"[{PROMPT!r} + str(i) for i in range({calls})]"
    body = f"out = llm_query_batched({prompts})" if batch else \
        f"out = []\nfor p in {prompts}:\n    out.append(llm_query(p))"
    return repl(f"{body}\nFINAL(str(len(out)))")


@pytest.mark.parametrize("batch", [False, True], ids=["serial", "batch"])
def test_a_budget_that_fits_n_calls_makes_about_n(batch):
    calls = 20
    code = _code(calls, batch)
    with FakeOpenAIServer(reply=lambda body: code if body["model"] == "root" else "blue") \
            as fake:
        def rlm(budget: float | None) -> RLM:
            options = {"backend": "openai", "base_url": fake.url, "price_per_mtok": PRICE}
            return RLM(backend={**options, "model": "root"},
                       sub_backend={**options, "model": "sub"}, max_iterations=2,
                       max_budget=budget)

        with rlm(None) as free:
            dry = free.completion("Go.")
        per_call = dry.usage["sub"].cost_usd / calls
        budget = dry.usage["root"].cost_usd + calls * per_call * (1 + 1e-9)
        fake.reset()
        with rlm(budget) as bounded:
            result = bounded.completion("Go.")
        made = sum(1 for r in fake.requests if r.body["model"] == "sub")
    assert result.cost_usd <= budget
    # before: 1,024 output tokens reserved a call (16 times the cost of one here), and a
    # batch's slots were refused while the first ones were still in flight
    assert made >= calls - 2, made


def test_under_a_budget_a_reply_without_a_cap_is_capped_at_its_reservation():
    code = repl("print(llm_query('a'))\nprint(llm_query('b'))\nFINAL('done')")
    with FakeOpenAIServer(reply=lambda body: code if body["model"] == "root" else "blue") \
            as fake:
        options = {"backend": "openai", "base_url": fake.url, "price_per_mtok": PRICE}
        for budget in (None, 1.0):
            fake.reset()
            with RLM(backend={**options, "model": "root"}, max_iterations=2,
                     sub_backend={**options, "model": "sub"}, max_budget=budget) as model:
                model.completion("Go.")
            caps = [r.body.get("max_completion_tokens", r.body.get("max_tokens"))
                    for r in fake.requests if r.body["model"] == "sub"]
            # the first reply of a model reserves 1,024 tokens, the next four times the
            # longest so far (at least 128); without a budget nothing is capped
            assert caps == ([None, None] if budget is None else [1024, 128]), caps
