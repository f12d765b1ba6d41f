"""``RLM.batch`` on threads: order, failure isolation, one batch budget, cancel, bad input."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from rlm import RLM
from rlm.backends.scripted import ScriptedBackend
from rlm.environments.local import LocalEnvironment
from rlm.errors import ConfigError
from tests.conftest import repl


def by_question(messages, depth):
    last = messages[-1]["content"]
    if "Question: boom" in last:
        raise RuntimeError("the backend broke")
    if "Question: " in last:
        word = last.split("Question: ")[1].split()[0]
        return repl(f"FINAL('{word} ' + str(len(context)))")
    return repl("FINAL('no question')")


def make(**kwargs) -> RLM:
    options = {"responses": by_question, "cost_per_call": 0.125,
               **kwargs.pop("backend_kwargs", {})}
    return RLM(backend="scripted", backend_kwargs=options, **kwargs)


def test_results_come_back_in_order_whatever_order_they_finish_in():
    prompts = [f"q{i}" for i in range(12)]
    finished: list[int] = []
    results = make(backend_kwargs={"latency_s": 0.01}).batch(
        prompts, ["x" * (12 - i) for i in range(12)], max_concurrency=4,
        on_result=lambda index, result: finished.append(index))
    assert [r.response for r in results] == [f"q{i} {12 - i}" for i in range(12)]
    assert sorted(finished) == list(range(12))


def test_without_contexts_each_prompt_is_its_own_input():
    results = make().batch(["abc", "de"])
    assert [r.response for r in results] == ["no question", "no question"]
    assert [r.trace.start.data["context_length"] for r in results] == [3, 2]


def test_a_failing_item_does_not_stop_the_others():
    results = make().batch(["a", "boom", "c"], ["1", "2", "3"])
    assert [r.stop_reason for r in results] == ["final", "error", "final"]
    assert "the backend broke" in results[1].error
    assert results[0].error is None and results[2].response == "c 1"


def test_the_batch_budget_admits_exactly_the_calls_that_fit():
    results = make().batch([f"q{i}" for i in range(60)], ["c"] * 60,
                           batch_budget=40 * 0.125, max_concurrency=8)
    assert sum(r.cost_usd for r in results) == 5.0
    assert sum(r.stop_reason == "final" for r in results) == 40
    assert {r.stop_reason for r in results} == {"final", "budget"}


def test_each_item_keeps_its_own_limits_too():
    results = make(max_budget=0.125).batch(["a", "b"], ["1", "2"], batch_budget=10)
    assert [r.cost_usd for r in results] == [0.125, 0.125]


def slow(messages, depth):
    time.sleep(0.05)
    return repl("x = 1")  # never finishes by itself


def test_cancel_stops_every_item_under_way():
    rlm = RLM(backend="scripted", backend_kwargs={"responses": slow}, max_iterations=10_000)
    threading.Timer(0.5, rlm.cancel).start()
    started = time.monotonic()
    results = rlm.batch(["a", "b", "c"], max_concurrency=3)
    assert time.monotonic() - started < 10
    assert [r.stop_reason for r in results] == ["cancelled"] * 3


def test_abatch_is_the_async_twin():
    results = asyncio.run(make().abatch(["a", "b"], ["x", "y"]))
    assert [r.response for r in results] == ["a 1", "b 1"]


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    (("one string",), {}, "list of prompts"),
    ((["a", "b"], ["x"]), {}, "2 prompts and 1 contexts"),
    ((["a"],), {"max_concurrency": 0}, "max_concurrency"),
    ((["a"],), {"batch_budget": -1}, "batch_budget must be a number"),
    ((["a"],), {"batch_budget": float("nan")}, "batch_budget must be a number"),
    ((["a"],), {"executor": "slurm"}, "unknown executor"),
])
def test_bad_input_is_refused_before_anything_runs(args, kwargs, message):
    backend = ScriptedBackend(by_question)
    with pytest.raises(ConfigError, match=message):
        RLM(backend=backend).batch(*args, **kwargs)
    assert backend.calls == []


def test_a_persistent_rlm_refuses_to_batch():
    with pytest.raises(ConfigError, match="persistent"):
        make(persistent=True).batch(["a"])


class Unpriced(ScriptedBackend):
    def estimate_cost(self, request):
        return None


def test_an_unpriced_model_cannot_have_a_batch_budget():
    backend = Unpriced(by_question, model="free?")
    with pytest.raises(ConfigError, match="price of free\\? is unknown"):
        RLM(backend=backend).batch(["a"], batch_budget=1.0)
    assert backend.calls == []


def test_executor_settings_are_checked_at_construction():
    with pytest.raises(ConfigError, match="executor_kwargs"):
        make(executor_kwargs={"address": "auto"})
    with pytest.raises(ConfigError, match="unknown executor"):
        make(executor="slurm")
    with pytest.raises(ConfigError, match="not an instance"):
        make(executor="ray", environment=LocalEnvironment())
    with pytest.raises(ConfigError, match="cannot be pickled"):  # an object holding a lock
        RLM(backend=ScriptedBackend(by_question), executor="ray")
    with pytest.raises(ConfigError, match="unknown executor_kwargs"):
        make(executor="ray", executor_kwargs={"adress": "auto"})
