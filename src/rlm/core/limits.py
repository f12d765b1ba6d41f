"""Limits of a call tree and the one ledger (``Budget``) that the whole tree spends from."""

from __future__ import annotations

import contextlib
import math
import numbers
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from rlm.errors import (
    BadResponseError,
    BudgetExceeded,
    Cancelled,
    ConfigError,
    ErrorLimitExceeded,
    IterationLimitExceeded,
    LimitExceeded,
    TimeLimitExceeded,
    TokenLimitExceeded,
)
from rlm.types import (
    MAX_COST_PER_CALL_USD,
    MAX_TOKENS_PER_CALL,
    Completion,
    ModelUsage,
    check_usage,
)

__all__ = ["MAX_TIMEOUT_S", "Budget", "Ledger", "Limits", "Reservation", "clamp_estimate"]


#: The longest ``max_timeout`` accepted (seconds): longer ones overflow OS timers.
MAX_TIMEOUT_S = 1e9
#: What a call that sets no ``max_output_tokens`` reserves for its reply: ``_OUTPUT_MARGIN``
#: times the longest reply its model gave in this run, within ``[_OUTPUT_FLOOR,
#: _OUTPUT_CAP]``; ``_OUTPUT_CAP`` before the model's first reply.
_OUTPUT_MARGIN = 4
_OUTPUT_FLOOR = 128
_OUTPUT_CAP = 1024
#: How often a call waiting for room looks again (it is also woken by every refund).
_ROOM_POLL_S = 0.1
_COUNTS = ("max_depth", "max_iterations", "max_tokens", "max_errors")


def _check_limit(name: str, value: Any, *, whole: bool, required: bool = False
                 ) -> int | float | None:
    """``value`` as a valid limit (``None`` for no limit), or raise ``ConfigError``."""
    kind = ("a whole number" if whole else "a number") + ("" if required else " or None")
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be {kind}, got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except (OverflowError, ValueError):  # an int too big for a float
        if value > 0 and whole:
            return int(value)
        raise ConfigError(f"{name} is out of range; pass None for no limit") from None
    if math.isnan(number):
        raise ConfigError(f"{name} must be {kind}, got NaN")
    if number < (1 if required else 0):
        raise ConfigError(f"{name} must be at least {1 if required else 0}, got {value!r}")
    if whole and isinstance(value, numbers.Integral):
        return int(value)
    if math.isinf(number):
        if required:
            raise ConfigError(f"{name} must be {kind}: it cannot be unlimited, got inf")
        return None  # inf means no limit, like None
    if whole and not number.is_integer():
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    return int(number) if whole else number


@dataclass(frozen=True)
class Limits:
    """Limits shared by the root call and every descendant together.

    - ``max_depth``: depth of the deepest LM call.  The root REPL runs at depth 0; code at
      depth ``d`` makes LM calls at depth ``d + 1``; ``rlm_query`` starts a child RLM (with its
      own REPL) at depth ``d + 1`` only while ``d + 1 < max_depth``, otherwise it is a plain LM
      call.  ``max_depth=1`` (the default, the paper's setting) means sub-calls are plain LMs.
    - ``max_iterations``: REPL turns (one model reply and its code) summed over the tree.
    - ``max_budget``: USD spent by every LM call of the tree.
    - ``max_timeout``: seconds since the root call started.
    - ``max_tokens``: input + output tokens of every LM call of the tree.
    - ``max_errors``: code blocks that raised, summed over the tree.

    ``None`` means unlimited (``max_depth`` and ``max_iterations`` are always set), and so
    does ``float("inf")``: it is stored as ``None``.  Every value is checked here, so a bad
    one fails at construction with a ``ConfigError`` naming the argument: limits must be
    numbers (not ``bool`` or ``str``), never NaN or negative; the four counts must be whole
    numbers (``3.0`` is taken as ``3``); ``max_timeout`` is at most ``MAX_TIMEOUT_S``
    (about 31 years; a longer wait is no limit, so pass ``None``).
    """

    max_depth: int = 1
    max_iterations: int = 30
    max_budget: float | None = None
    max_timeout: float | None = None
    max_tokens: int | None = None
    max_errors: int | None = None

    def __post_init__(self) -> None:
        for name in _COUNTS:
            object.__setattr__(self, name, _check_limit(
                name, getattr(self, name), whole=True,
                required=name in ("max_depth", "max_iterations")))
        for name in ("max_budget", "max_timeout"):
            object.__setattr__(self, name, _check_limit(name, getattr(self, name), whole=False))
        if self.max_timeout is not None and self.max_timeout > MAX_TIMEOUT_S:
            raise ConfigError(f"max_timeout must be at most {MAX_TIMEOUT_S:g} seconds, got "
                              f"{self.max_timeout:g}; pass None for no time limit")

    def with_overrides(self, **values: Any) -> Limits:
        """These limits with every value given (not ``None``) replaced, checked again."""
        given = {name: value for name, value in values.items() if value is not None}
        return replace(self, **given) if given else self


@dataclass
class Reservation:
    """Room held in the ledger for one LM call that has not finished yet.

    ``parent``: the room held for the same call in the parent ledger (a batch's budget);
    ``id``: how a ledger in another process names it (``rlm.distributed.ledger``).
    """

    cost_usd: float
    tokens: int
    done: bool = field(default=False)
    parent: Reservation | None = None
    id: int = 0


class Ledger(Protocol):
    """What the engine needs of a call tree's ledger: ``Budget`` in one process, or
    ``rlm.distributed.ledger.RemoteBudget`` when the tree spans a Ray cluster."""

    limits: Limits
    cancel_event: threading.Event

    @property
    def tripped(self) -> LimitExceeded | Cancelled | None: ...
    @property
    def stop_reason(self) -> str | None: ...
    def close(self) -> None: ...
    def elapsed_s(self) -> float: ...
    def time_left_s(self) -> float | None: ...
    def check(self) -> None: ...
    def trip(self, reason: LimitExceeded | Cancelled) -> None: ...
    def on_stop(self, callback: Callable[[], None]) -> Callable[[], None]: ...
    def cancel(self) -> None: ...
    def start_iteration(self) -> int: ...
    def count_error(self) -> None: ...
    def reserve(self, cost_usd: float | Callable[[], float | None] | None, tokens: int, *,
                wait: bool = False) -> Reservation: ...
    def output_allowance(self, key: str) -> int: ...
    def commit(self, reservation: Reservation, completion: Completion, key: str) -> None: ...
    def release(self, reservation: Reservation) -> None: ...
    def usage_snapshot(self) -> dict[str, ModelUsage]: ...
    def remaining(self, depth: int = 0) -> dict[str, Any]: ...


class Budget:
    """The thread-safe ledger of one call tree.

    Parent and children hold the same ``Budget``: every LM call reserves its estimated cost
    and tokens before it starts (so parallel children cannot each spend "the remainder"),
    then commits what it really cost and the rest of the reservation is refunded.  The
    estimate of a reply's length is the call's ``max_output_tokens`` when it sets one,
    else ``output_allowance``: learned from the run's own replies, so that a budget that
    fits N calls makes about N calls.  The first limit reached *trips* the ledger: the
    reason is remembered and ``cancel_event`` is set, so every node stops at its next step.

    ``parent``: a ledger this one also spends from (``RLM.batch(..., batch_budget=)``):
    each call holds room in both.  A parent that is cancelled stops this tree at once; one
    that is spent refuses this tree's next call (a block already paid for still runs).
    """

    def __init__(
        self, limits: Limits, *, clock: Callable[[], float] = time.monotonic,
        parent: Ledger | None = None,
    ) -> None:
        self.limits = limits
        self.parent = parent
        self._clock = clock
        self._lock = threading.Lock()
        #: Notified whenever room is given back (a commit, a release) or the tree stops.
        self._room = threading.Condition(self._lock)
        self.started = clock()
        self.deadline = None if limits.max_timeout is None else self.started + limits.max_timeout
        self.cost_usd = 0.0
        self.tokens = 0
        self.iterations = 0
        self.errors = 0
        self.usage: dict[str, ModelUsage] = {}
        self._reserved_cost = 0.0
        self._reserved_tokens = 0
        self._longest_output: dict[str, int] = {}
        self.tripped: LimitExceeded | Cancelled | None = None
        self.cancel_event = threading.Event()
        self._on_stop: list[Callable[[], None]] = []
        self._in_flight = 0
        self._watchdog: threading.Timer | None = None
        if limits.max_timeout is not None and limits.max_timeout <= threading.TIMEOUT_MAX:
            # Trips the tree at the deadline even while every node is blocked in a call.
            self._watchdog = threading.Timer(limits.max_timeout, self._on_deadline)
            self._watchdog.daemon = True
            self._watchdog.start()
        self._unlink_parent: Callable[[], None] | None = None
        if parent is not None:
            self._unlink_parent = parent.on_stop(self._parent_stopped)

    def _parent_stopped(self) -> None:
        reason = self.parent.tripped if self.parent is not None else None
        if reason is None or isinstance(reason, Cancelled):
            self.trip(reason or Cancelled("the batch was stopped"))

    def _on_deadline(self) -> None:
        self.trip(TimeLimitExceeded(f"max_timeout of {self.limits.max_timeout}s reached"))

    def close(self) -> None:
        """Stop the deadline watchdog (the run is over)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._unlink_parent is not None:
            self._unlink_parent()
            self._unlink_parent = None

    # -- checks ---------------------------------------------------------------------------
    def elapsed_s(self) -> float:
        return self._clock() - self.started

    def time_left_s(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - self._clock())

    def check(self) -> None:
        """Raise the limit that stops the tree, if any (tripped, cancelled or past deadline)."""
        if self.tripped is not None:
            raise type(self.tripped)(str(self.tripped))
        if self.deadline is not None and self._clock() >= self.deadline:
            self.trip(TimeLimitExceeded(f"max_timeout of {self.limits.max_timeout}s reached"))
            raise TimeLimitExceeded(f"max_timeout of {self.limits.max_timeout}s reached")

    def trip(self, reason: LimitExceeded | Cancelled) -> None:
        """Stop the whole tree for ``reason`` (the first reason wins); the first trip calls
        the ``on_stop`` callbacks (each environment's ``interrupt``)."""
        with self._lock:
            first = self.tripped is None
            if first:
                self.tripped = reason
            callbacks = list(self._on_stop) if first else []
            self._room.notify_all()
        self.cancel_event.set()
        for callback in callbacks:
            with contextlib.suppress(Exception):  # one broken callback must not stop others
                callback()

    def on_stop(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (from any thread) when the tree stops: at once if it already
        has.  Returns a function that removes it."""
        with self._lock:
            stopped = self.tripped is not None
            if not stopped:
                self._on_stop.append(callback)
        if stopped:
            with contextlib.suppress(Exception):
                callback()

        def remove() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._on_stop.remove(callback)

        return remove

    def cancel(self) -> None:
        self.trip(Cancelled("the run was cancelled"))

    @property
    def stop_reason(self) -> str | None:
        return None if self.tripped is None else self.tripped.stop_reason

    # -- iterations and errors --------------------------------------------------------------
    def start_iteration(self) -> int:
        """Count one REPL turn of any node; raise if the tree has none left.

        Running out of turns does not trip the tree: each node stops at its next turn.
        """
        self.check()
        with self._lock:
            if self.iterations < self.limits.max_iterations:
                self.iterations += 1
                return self.iterations
        # Not a trip: calls already under way (and the last-resort extract call) may finish.
        raise IterationLimitExceeded(
            f"max_iterations of {self.limits.max_iterations} turns used across the tree"
        )

    def count_error(self) -> None:
        """Count one failed code block; trips the tree when ``max_errors`` is passed."""
        with self._lock:
            self.errors += 1
            over = self.limits.max_errors is not None and self.errors > self.limits.max_errors
        if over:
            self.trip(ErrorLimitExceeded(
                f"max_errors of {self.limits.max_errors} failed code blocks passed"
            ))

    # -- money and tokens -------------------------------------------------------------------
    def reserve(self, cost_usd: float | Callable[[], float | None] | None, tokens: int, *,
                wait: bool = False) -> Reservation:
        """Hold room for a call estimated at ``cost_usd`` and ``tokens``, or refuse it.

        The estimates come from the backend: ``None``, NaN or a negative number counts as
        0, and each is capped at what one call may report (``MAX_COST_PER_CALL_USD``,
        ``MAX_TOKENS_PER_CALL``), so a bad estimate can never corrupt the ledger.  With
        ``wait``, a call that does not fit only because of room held by calls in flight
        waits for them to settle (their refunds may make room) instead of being refused;
        it is refused once nothing is in flight, or when the tree stops.  ``cost_usd`` may
        be a function, asked again after each wait (what the run learned may lower it).
        """
        self.check()
        tokens = int(clamp_estimate(tokens, MAX_TOKENS_PER_CALL))
        held_above = None
        if self.parent is not None:
            held_above = self.parent.reserve(cost_usd, tokens, wait=wait)
        try:
            while True:
                cost = clamp_estimate(cost_usd() if callable(cost_usd) else cost_usd,
                                 MAX_COST_PER_CALL_USD)
                reservation = self.attempt(cost, tokens, wait=wait)
                if reservation is not None:
                    reservation.parent = held_above
                    return reservation
        except BaseException:
            if held_above is not None and self.parent is not None:
                self.parent.release(held_above)
            raise

    def attempt(self, cost: float, tokens: int, *, wait: bool = False) -> Reservation | None:
        """One try of ``reserve`` with checked estimates: the reservation, or ``None`` when
        the call should try again (``wait``: it waited a moment for room held in flight)."""
        with self._lock:
            exc = self._refusal_locked(cost, tokens)
            held = self._reserved_cost > 0 or self._reserved_tokens > 0
            if exc is None:
                self._reserved_cost += cost
                self._reserved_tokens += tokens
                self._in_flight += 1
                return Reservation(cost, tokens)
            if wait and held and self.tripped is None:
                self._room.wait(_ROOM_POLL_S)
                return None
        # Refused while no room is held in flight: no later call can fit either.
        if not held:
            self.trip(exc)
        self.check()  # the tree stopped while this call waited: say why
        raise exc

    def _refusal_locked(self, cost: float, tokens: int) -> LimitExceeded | None:
        """The limit a call of ``cost`` and ``tokens`` would pass now, if any."""
        limit_usd, limit_tok = self.limits.max_budget, self.limits.max_tokens
        if limit_usd is not None and self.cost_usd + self._reserved_cost + cost > limit_usd:
            return BudgetExceeded(
                f"max_budget of ${limit_usd:g} would be exceeded: spent "
                f"${self.cost_usd:.6g}, in flight ${self._reserved_cost:.6g}, "
                f"next call ~${cost:.6g}"
            )
        if limit_tok is not None and self.tokens + self._reserved_tokens + tokens > limit_tok:
            return TokenLimitExceeded(
                f"max_tokens of {limit_tok} would be exceeded: used {self.tokens}, "
                f"in flight {self._reserved_tokens}, next call ~{tokens}"
            )
        return None

    def output_allowance(self, key: str) -> int:
        """Output tokens to reserve for a call of model ``key`` that sets no
        ``max_output_tokens``: four times its longest reply in this run, from 128 to 1,024
        tokens (1,024 before its first reply).  Under a ``max_budget`` the call's reply is
        capped at it (``LMHandler``), so the budget stays exact."""
        with self._lock:
            longest = self._longest_output.get(key)
        if longest is None:
            return _OUTPUT_CAP
        return max(_OUTPUT_FLOOR, min(_OUTPUT_CAP, _OUTPUT_MARGIN * longest))

    def commit(self, reservation: Reservation, completion: Completion, key: str) -> None:
        """Record what a call really cost and release its reservation.

        ``Completion`` checks its usage when it is built; this checks it again (a backend
        could have forged one), so spending only ever grows: a bad report releases the
        reservation, charges nothing and raises ``BadResponseError``.
        """
        try:
            check_usage(completion)
        except BadResponseError:
            self.release(reservation)
            raise
        if reservation.parent is not None and self.parent is not None:
            self.parent.commit(reservation.parent, completion, key)
        with self._lock:
            self._release_locked(reservation)
            self.cost_usd += completion.cost_usd or 0.0
            self.tokens += completion.total_tokens
            self.usage.setdefault(key, ModelUsage()).add(completion)
            self._longest_output[key] = max(self._longest_output.get(key, 0),
                                            completion.output_tokens)
            over_usd = (self.limits.max_budget is not None
                        and self.cost_usd >= self.limits.max_budget)
            over_tok = (self.limits.max_tokens is not None
                        and self.tokens >= self.limits.max_tokens)
        if over_usd:
            self.trip(BudgetExceeded(f"max_budget of ${self.limits.max_budget:g} spent"))
        elif over_tok:
            self.trip(TokenLimitExceeded(f"max_tokens of {self.limits.max_tokens} used"))

    def release(self, reservation: Reservation) -> None:
        """Give back the room of a call that failed or was never made."""
        if reservation.parent is not None and self.parent is not None:
            self.parent.release(reservation.parent)
        with self._lock:
            self._release_locked(reservation)

    def _release_locked(self, reservation: Reservation) -> None:
        if not reservation.done:
            reservation.done = True
            self._reserved_cost -= reservation.cost_usd
            self._reserved_tokens -= reservation.tokens
            self._in_flight -= 1
            if self._in_flight <= 0:  # no float residue once nothing is in flight
                self._in_flight, self._reserved_cost, self._reserved_tokens = 0, 0.0, 0
            self._room.notify_all()

    # -- reporting --------------------------------------------------------------------------
    def usage_snapshot(self) -> dict[str, ModelUsage]:
        with self._lock:
            return {k: ModelUsage(**v.to_dict()) for k, v in self.usage.items()}

    def remaining(self, depth: int = 0) -> dict[str, Any]:
        """What is left of every limit, as seen from a node at ``depth`` (for ``budget()``)."""
        lim = self.limits

        def left(limit: float | None, used: float) -> float | None:
            return None if limit is None else max(0.0, limit - used)

        with self._lock:
            return {
                "depth": depth,
                "max_depth": lim.max_depth,
                "iterations_left": lim.max_iterations - self.iterations,
                "budget_usd_left": left(lim.max_budget, self.cost_usd),
                "time_left_s": self.time_left_s(),
                "tokens_left": None if lim.max_tokens is None
                else int(left(lim.max_tokens, self.tokens) or 0),
                "errors_left": None if lim.max_errors is None
                else int(max(0, lim.max_errors - self.errors)),
                "spent_usd": self.cost_usd,
                "tokens_used": self.tokens,
                "elapsed_s": self.elapsed_s(),
            }


def clamp_estimate(value: Any, cap: float) -> float:
    """A backend's estimate as a number in ``[0, cap]`` (``None``, NaN or < 0 count as 0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return 0.0
    try:
        number = float(value)
    except (OverflowError, ValueError):
        number = math.inf if value > 0 else 0.0
    if math.isnan(number) or number <= 0:
        return 0.0
    return min(number, cap)
