import contextlib
import threading

import pytest

from rlm.bridge import guest
from rlm.core.limits import Budget, Limits
from rlm.errors import (
    BudgetExceeded,
    ConfigError,
    IterationLimitExceeded,
    LimitExceeded,
    TimeLimitExceeded,
    TokenLimitExceeded,
)
from rlm.types import Completion


def done(cost: float, tokens: int = 0) -> Completion:
    return Completion("x", "m", input_tokens=tokens, output_tokens=0, cost_usd=cost)


def test_limits_validate():
    with pytest.raises(ConfigError):
        Limits(max_depth=0)
    with pytest.raises(ConfigError):
        Limits(max_budget=-1)


def test_a_call_that_does_not_fit_is_refused_before_it_starts():
    budget = Budget(Limits(max_budget=1.0))
    r = budget.reserve(0.6, 0)
    budget.commit(r, done(0.6), "m")
    with pytest.raises(BudgetExceeded):
        budget.reserve(0.5, 0)
    assert budget.cost_usd == pytest.approx(0.6)


def test_parallel_reservations_cannot_overrun_the_budget():
    budget = Budget(Limits(max_budget=1.0))
    granted = []
    barrier = threading.Barrier(20)

    def worker():
        barrier.wait()
        with contextlib.suppress(BudgetExceeded):
            granted.append(budget.reserve(0.1, 0))

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 10
    for r in granted:
        budget.commit(r, done(0.1), "m")
    assert budget.cost_usd == pytest.approx(1.0)


def test_tokens_are_reserved_and_charged():
    budget = Budget(Limits(max_tokens=100))
    r = budget.reserve(0, 60)
    with pytest.raises(TokenLimitExceeded):
        budget.reserve(0, 50)
    budget.commit(r, done(0, 60), "m")
    assert budget.tokens == 60


def test_released_reservation_gives_room_back():
    budget = Budget(Limits(max_budget=1.0))
    r = budget.reserve(0.9, 0)
    budget.release(r)
    budget.release(r)  # twice is harmless: the room comes back once
    budget.reserve(0.9, 0)
    with pytest.raises(BudgetExceeded):
        budget.reserve(0.2, 0)


def test_iterations_are_counted_across_the_tree_without_tripping():
    budget = Budget(Limits(max_iterations=2))
    budget.start_iteration()
    budget.start_iteration()
    with pytest.raises(IterationLimitExceeded):
        budget.start_iteration()
    assert budget.tripped is None


def test_deadline_trips_the_tree():
    now = [0.0]
    budget = Budget(Limits(max_timeout=5), clock=lambda: now[0])
    budget.check()
    now[0] = 6.0
    with pytest.raises(TimeLimitExceeded):
        budget.check()
    assert budget.cancel_event.is_set()
    assert budget.stop_reason == "timeout"


def test_usage_is_summed_per_model_not_overwritten():
    budget = Budget(Limits())
    for _ in range(3):
        budget.commit(budget.reserve(0, 0), done(0.5, 10), "same-model")
    usage = budget.usage_snapshot()["same-model"]
    assert (usage.calls, usage.input_tokens, usage.cost_usd) == (3, 30, 1.5)


def test_the_guest_knows_every_limit_of_the_tree():
    """The guest (standard library only, so it cannot import ``rlm.errors``) tells a limit
    (``LimitReached``) from a failed query by the error's name: every ``LimitExceeded``
    of ``rlm.errors``, and ``Cancelled``."""

    def tree(cls: type) -> set[str]:
        own = [sub for sub in cls.__subclasses__() if sub.__module__ == "rlm.errors"]
        return {cls.__name__}.union(*(tree(sub) for sub in own))

    assert tree(LimitExceeded) | {"Cancelled"} == guest.LIMIT_KINDS
