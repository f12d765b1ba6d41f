"""Numbers from outside are checked: limits at construction, usage on every Completion."""

from __future__ import annotations

import math
import threading
import time

import pytest

from rlm import RLM
from rlm.backends.base import LMBackend
from rlm.core.limits import MAX_TIMEOUT_S, Budget, Limits
from rlm.errors import BadResponseError, BudgetExceeded, ConfigError
from rlm.types import (
    MAX_COST_PER_CALL_USD,
    MAX_TOKENS_PER_CALL,
    Completion,
    CompletionRequest,
)
from tests.conftest import repl

NAN, INF = float("nan"), float("inf")


# -- limits -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["max_budget", "max_timeout", "max_tokens", "max_errors",
                                  "max_depth", "max_iterations"])
@pytest.mark.parametrize("value", [NAN, -1, -INF, "3", True, [1]])
def test_bad_limits_are_refused_naming_the_argument(name, value):
    with pytest.raises(ConfigError, match=name):
        Limits(**{name: value})


@pytest.mark.parametrize("name", ["max_budget", "max_timeout"])
def test_nan_limit_through_rlm_is_a_config_error(name):
    with pytest.raises(ConfigError, match=f"{name} must be a number or None, got NaN"):
        RLM(backend="scripted", backend_kwargs={"responses": []}, **{name: NAN})


@pytest.mark.parametrize("name", ["max_tokens", "max_errors", "max_depth", "max_iterations"])
def test_counts_must_be_whole(name):
    with pytest.raises(ConfigError, match=f"{name} must be a whole number"):
        Limits(**{name: 2.5})
    assert getattr(Limits(**{name: 3.0}), name) == 3  # a whole float is taken as an int


def test_inf_means_no_limit_except_for_depth_and_iterations():
    limits = Limits(max_budget=INF, max_timeout=INF, max_tokens=INF, max_errors=INF)
    assert (limits.max_budget, limits.max_timeout, limits.max_tokens, limits.max_errors) == (
        None, None, None, None)
    for name in ("max_depth", "max_iterations"):
        with pytest.raises(ConfigError, match=f"{name} .*cannot be unlimited"):
            Limits(**{name: INF})


def test_a_timeout_too_long_for_os_timers_is_refused():
    with pytest.raises(ConfigError, match="max_timeout must be at most"):
        Limits(max_timeout=1e300)
    budget = Budget(Limits(max_timeout=MAX_TIMEOUT_S))  # the longest one still runs a watchdog
    try:
        assert budget._watchdog is not None and budget._watchdog.is_alive()
    finally:
        budget.close()


def test_max_timeout_inf_runs_without_crashing_the_watchdog(monkeypatch):
    crashed: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashed.append(args.exc_value))
    result = RLM(backend="scripted", backend_kwargs={"responses": [repl("FINAL('done')")]},
                 max_timeout=INF).completion("q")
    time.sleep(0.05)
    assert (result.response, result.stop_reason) == ("done", "final")
    assert crashed == []


# -- usage on a Completion --------------------------------------------------------------------
@pytest.mark.parametrize("field", ["input_tokens", "output_tokens", "cached_input_tokens"])
@pytest.mark.parametrize("value", [-1, NAN, INF, -INF, 1e300, MAX_TOKENS_PER_CALL + 1, 2.5,
                                   "12", None, True,
                                   pytest.param(10**5000, id="int-of-5000-digits")])
def test_impossible_token_counts_are_bad_responses(field, value):
    with pytest.raises(BadResponseError, match=f"impossible usage: {field}="):
        Completion("x", "m", **{field: value})


@pytest.mark.parametrize("value", [-0.01, -INF, NAN, INF, MAX_COST_PER_CALL_USD * 2, "1",
                                   False, 10**400])
def test_impossible_costs_are_bad_responses(value):
    with pytest.raises(BadResponseError, match="impossible usage: cost_usd="):
        Completion("x", "m", cost_usd=value)


def test_possible_usage_is_normalised():
    completion = Completion("x", "m", input_tokens=12.0, output_tokens=3, cost_usd=1)
    assert (completion.input_tokens, completion.cost_usd) == (12, 1.0)
    assert type(completion.input_tokens) is int and type(completion.cost_usd) is float
    assert Completion("x", "m", cost_usd=None).cost_usd is None


# -- the ledger -------------------------------------------------------------------------------
def forged(**usage) -> Completion:
    """A Completion whose usage was changed after the check (a backend cheating)."""
    completion = Completion("x", "m", input_tokens=1, output_tokens=1, cost_usd=0.1)
    for name, value in usage.items():
        object.__setattr__(completion, name, value)
    return completion


@pytest.mark.parametrize("usage", [{"cost_usd": -1e6}, {"cost_usd": NAN},
                                   {"input_tokens": -10**9}, {"output_tokens": INF}])
def test_commit_never_lowers_what_was_spent(usage):
    budget = Budget(Limits(max_budget=1.0, max_tokens=1000))
    budget.commit(budget.reserve(0.5, 10), Completion("x", "m", 10, 0, 0.5), "m")
    reservation = budget.reserve(0.1, 10)
    with pytest.raises(BadResponseError):
        budget.commit(reservation, forged(**usage), "m")
    assert (budget.cost_usd, budget.tokens) == (0.5, 10)
    assert reservation.done  # the room it held is given back
    budget.commit(budget.reserve(0.5, 0), Completion("x", "m", cost_usd=0.5), "m")
    assert budget.stop_reason == "budget"  # a later call still trips it


def test_an_infinite_estimate_never_fits():
    budget = Budget(Limits(max_budget=1.0))
    with pytest.raises(BudgetExceeded):
        budget.reserve(INF, 0)
    assert budget._reserved_cost == 0.0  # capped, never inf (inf - inf would be NaN)


@pytest.mark.parametrize("estimate", [NAN, -5.0, -INF, "0.2"])
def test_a_bad_estimate_cannot_poison_the_reservations(estimate):
    budget = Budget(Limits(max_budget=1.0))
    budget.release(budget.reserve(estimate, 0))
    held = budget.reserve(0.6, 0)
    with pytest.raises(BudgetExceeded):
        budget.reserve(0.6, 0)  # a NaN or negative held amount would let this through
    budget.release(held)
    budget.reserve(0.6, 0)


def test_a_bad_token_estimate_cannot_poison_the_reservations():
    budget = Budget(Limits(max_tokens=100))
    budget.release(budget.reserve(0, -10**12))
    budget.reserve(0, 60)
    with pytest.raises(BudgetExceeded.__mro__[1]):  # TokenLimitExceeded is a LimitExceeded
        budget.reserve(0, 60)


# -- a third-party backend --------------------------------------------------------------------
class LyingBackend(LMBackend):
    """Answers the root turns honestly and sub-calls with a negative cost."""

    name = "lying"
    model_name = "liar"

    def __init__(self, replies: list[str]) -> None:
        self.replies = replies

    def complete(self, request: CompletionRequest) -> Completion:
        if request.depth == 0:
            return Completion(self.replies.pop(0), self.model_name, 10, 10, cost_usd=0.3)
        return Completion("free!", self.model_name, 10, 10, cost_usd=-1000.0)

    def estimate_cost(self, request: CompletionRequest) -> float | None:
        return 0.01


def test_a_backend_reporting_negative_cost_is_never_credited():
    replies = [repl("r = llm_query('q')"), repl("print('again')"), repl("print('more')"),
               repl("FINAL('never')")]
    result = RLM(backend=LyingBackend(replies), max_budget=0.8,
                 extract_on_limit=False).completion("c")
    assert result.stop_reason == "budget"
    assert result.cost_usd == pytest.approx(0.9) and result.cost_usd > 0
    [failed] = [e for n in result.trace.walk() for e in n.lm_calls if e.data.get("error")]
    assert failed.data["error"]["type"] == "BadResponseError"
    assert "impossible usage: cost_usd=-1000.0" in failed.data["error"]["message"]
    assert all(not math.isnan(u.cost_usd) and u.cost_usd >= 0 for u in result.usage.values())
