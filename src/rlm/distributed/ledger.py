"""One ledger for a call tree or batch that spans a Ray cluster.

``LedgerActor`` holds the same ``Budget`` that a run on one machine uses, inside a Ray
actor, so every reservation, commit and trip of every node is decided in one place, in
order: a budget that fits N calls admits N calls whichever nodes make them.
``RemoteBudget`` is what each process spends through: it has ``Budget``'s interface
(``rlm.core.limits.Ledger``), forwards each decision to the actor, and learns that the
tree stopped from a long-poll, so a limit or a cancel interrupts every node's REPL.

Each process names its reservations with an *owner* path (``root/child/grandchild``):
when a worker dies mid-call, whoever waited for it releases everything held under its
path (``release_owner``), so room held by the dead is given back.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

from rlm import errors
from rlm.core.limits import Budget, Limits, Reservation, clamp_estimate
from rlm.types import MAX_COST_PER_CALL_USD, MAX_TOKENS_PER_CALL, Completion, ModelUsage

__all__ = ["LedgerActor", "LedgerHandle", "RemoteBudget"]

#: The errors a ledger decision can raise, by name: they cross the actor boundary as
#: ``(name, message)`` and are raised again as themselves.
_ERRORS: dict[str, type[errors.RLMError]] = {
    cls.__name__: cls for cls in (
        errors.BudgetExceeded, errors.TokenLimitExceeded, errors.TimeLimitExceeded,
        errors.IterationLimitExceeded, errors.ErrorLimitExceeded, errors.LimitExceeded,
        errors.Cancelled, errors.BadResponseError,
    )
}
#: How long one long-poll for "the tree stopped" waits before it asks again.
_POLL_S = 1.0

Packed = tuple[str, str] | None


def _pack(exc: BaseException | None) -> Packed:
    return None if exc is None else (type(exc).__name__, str(exc))


def _unpack(packed: tuple[str, str]) -> errors.RLMError:
    name, message = packed
    return _ERRORS.get(name, errors.RLMError)(message)


class LedgerActor:
    """The tree's ``Budget`` as a Ray actor (made with ``max_concurrency``, so a call that
    waits for room never blocks the others).  Every reply is ``(outcome, tripped)``."""

    def __init__(self, limits: Limits) -> None:
        self.budget = Budget(limits)
        self._ids = itertools.count(1)
        self._held: dict[int, tuple[str, Reservation]] = {}
        self._lock = threading.Lock()

    def _reply(self, outcome: Any) -> tuple[Any, Packed]:
        return outcome, _pack(self.budget.tripped)

    def call(self, method: str, *args: Any) -> tuple[Any, Packed]:
        """One of ``Budget``'s methods that needs no reservation; ``("error", e)`` if it raised."""
        return self._reply(self._ok(getattr(self.budget, method), *args))

    def reserve(self, cost: Any, tokens: Any, wait: bool, owner: str) -> tuple[Any, Packed]:
        """``("ok", id)``, ``("wait", None)`` (ask again), or ``("error", e)``."""
        try:
            self.budget.check()
            reservation = self.budget.attempt(
                clamp_estimate(cost, MAX_COST_PER_CALL_USD),
                int(clamp_estimate(tokens, MAX_TOKENS_PER_CALL)), wait=wait)
        except errors.RLMError as exc:
            return self._reply(("error", _pack(exc)))
        if reservation is None:
            return self._reply(("wait", None))
        with self._lock:
            reservation.id = next(self._ids)
            self._held[reservation.id] = (owner, reservation)
        return self._reply(("ok", (reservation.id, reservation.cost_usd, reservation.tokens)))

    def _take(self, reservation_id: int) -> Reservation | None:
        with self._lock:
            held = self._held.pop(reservation_id, None)
        return None if held is None else held[1]

    def commit(self, reservation_id: int, completion: Completion, key: str
               ) -> tuple[Any, Packed]:
        reservation = self._take(reservation_id)
        if reservation is None:
            return self._reply(("error", ("RLMError", "unknown reservation")))
        return self._reply(self._ok(self.budget.commit, reservation, completion, key))

    def release(self, reservation_id: int) -> tuple[Any, Packed]:
        reservation = self._take(reservation_id)
        if reservation is not None:
            self.budget.release(reservation)
        return self._reply(("ok", None))

    def release_owner(self, prefix: str) -> int:
        """Release every reservation held by ``prefix`` or below it (a dead worker's)."""
        with self._lock:
            ids = [i for i, (owner, _) in self._held.items()
                   if owner == prefix or owner.startswith(prefix + "/")]
            taken = [self._held.pop(i)[1] for i in ids]
        for reservation in taken:
            self.budget.release(reservation)
        return len(taken)

    def held(self) -> int:
        """How many reservations are open (0 once every call has settled)."""
        with self._lock:
            return len(self._held)

    def wait_stop(self, timeout_s: float) -> Packed:
        """Return the reason the tree stopped, waiting up to ``timeout_s`` for it."""
        self.budget.cancel_event.wait(timeout_s)
        return _pack(self.budget.tripped)

    def _ok(self, method: Callable[..., Any], *args: Any) -> Any:
        try:
            return ("ok", method(*args))
        except errors.RLMError as exc:
            return ("error", _pack(exc))


@dataclass(frozen=True)
class LedgerHandle:
    """What travels to a worker so that it can spend from the ledger: the actor and the
    limits (``owner``: the path of reservations made through it)."""

    actor: Any
    limits: Limits
    owner: str = "root"

    def below(self, name: str) -> LedgerHandle:
        return LedgerHandle(self.actor, self.limits, f"{self.owner}/{name}")


class RemoteBudget:
    """A ``Ledger`` whose decisions are made by a ``LedgerActor`` (see the module doc)."""

    def __init__(self, handle: LedgerHandle) -> None:
        self.handle = handle
        self.limits = handle.limits
        self.owner = handle.owner
        self._actor = handle.actor
        self.cancel_event = threading.Event()
        self._lock = threading.Lock()
        self._tripped: errors.LimitExceeded | errors.Cancelled | None = None
        self._callbacks: list[Callable[[], None]] = []
        self._closed = threading.Event()
        self._started = time.monotonic()
        left = self._ask("time_left_s")
        self._deadline = None if left is None else self._started + left
        self._watcher = threading.Thread(target=self._watch, name="rlm-ledger-watch",
                                         daemon=True)
        self._watcher.start()

    @classmethod
    def create(cls, limits: Limits, **actor_options: Any) -> RemoteBudget:
        """A new ledger actor for ``limits`` and the root's proxy to it."""
        actor_class = ray.remote(LedgerActor)
        actor = actor_class.options(max_concurrency=1000, num_cpus=0,
                                    **actor_options).remote(limits)
        return cls(LedgerHandle(actor, limits))

    # -- talking to the actor ---------------------------------------------------------------
    def _settle(self, reply: tuple[Any, Packed]) -> Any:
        outcome, tripped = reply
        if tripped is not None:
            self._stopped(tripped)
        return outcome

    def _get(self, ref: Any) -> Any:
        try:
            return self._settle(ray.get(ref))
        except ray.exceptions.RayError as exc:  # the ledger's actor is gone
            reason = errors.Cancelled(f"the run's ledger is unreachable: {type(exc).__name__}")
            self._stopped(_pack(reason))
            raise reason from exc

    def _ask(self, method: str, *args: Any) -> Any:
        kind, value = self._get(self._actor.call.remote(method, *args))
        if kind == "error":
            raise _unpack(value)
        return value

    def _stopped(self, packed: Packed) -> None:
        if packed is None:
            return
        with self._lock:
            if self._tripped is not None:
                return
            self._tripped = _unpack(packed)  # type: ignore[assignment]
            callbacks, self._callbacks = self._callbacks, []
        self.cancel_event.set()
        for callback in callbacks:
            with contextlib.suppress(Exception):
                callback()

    def _watch(self) -> None:
        while not self._closed.is_set() and self._tripped is None:
            try:
                packed = ray.get(self._actor.wait_stop.remote(_POLL_S))
            except Exception as exc:  # the actor died, or ray shut down
                if not self._closed.is_set():
                    self._stopped(("Cancelled", f"the run's ledger is unreachable: {exc}"))
                return
            self._stopped(packed)

    # -- the Ledger interface ----------------------------------------------------------------
    @property
    def tripped(self) -> errors.LimitExceeded | errors.Cancelled | None:
        return self._tripped

    @property
    def stop_reason(self) -> str | None:
        return None if self._tripped is None else self._tripped.stop_reason

    def close(self) -> None:
        """Stop watching the actor (this process is done with the tree)."""
        self._closed.set()

    def shutdown(self) -> None:
        """End the actor itself (called by whoever made it, once the run is over)."""
        self.close()
        with contextlib.suppress(Exception):
            ray.kill(self._actor)

    def elapsed_s(self) -> float:
        return float(self._ask("elapsed_s"))

    def time_left_s(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def check(self) -> None:
        if self._tripped is not None:
            raise type(self._tripped)(str(self._tripped))
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self._ask("check")

    def trip(self, reason: errors.LimitExceeded | errors.Cancelled) -> None:
        self._get(self._actor.call.remote("trip", reason))
        self._stopped(_pack(reason))

    def on_stop(self, callback: Callable[[], None]) -> Callable[[], None]:
        with self._lock:
            stopped = self._tripped is not None
            if not stopped:
                self._callbacks.append(callback)
        if stopped:
            with contextlib.suppress(Exception):
                callback()

        def remove() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return remove

    def cancel(self) -> None:
        self.trip(errors.Cancelled("the run was cancelled"))

    def start_iteration(self) -> int:
        return int(self._ask("start_iteration"))

    def count_error(self) -> None:
        self._ask("count_error")

    def reserve(self, cost_usd: float | Callable[[], float | None] | None, tokens: int, *,
                wait: bool = False) -> Reservation:
        self.check()
        while True:
            cost = cost_usd() if callable(cost_usd) else cost_usd
            kind, value = self._get(self._actor.reserve.remote(cost, tokens, wait, self.owner))
            if kind == "ok":
                reservation_id, cost_held, tokens_held = value
                return Reservation(cost_held, tokens_held, id=reservation_id)
            if kind == "error":
                raise _unpack(value)

    def output_allowance(self, key: str) -> int:
        return int(self._ask("output_allowance", key))

    def commit(self, reservation: Reservation, completion: Completion, key: str) -> None:
        if reservation.done:
            return
        reservation.done = True
        kind, value = self._get(self._actor.commit.remote(reservation.id, completion, key))
        if kind == "error":
            raise _unpack(value)

    def release(self, reservation: Reservation) -> None:
        if not reservation.done:
            reservation.done = True
            self._get(self._actor.release.remote(reservation.id))

    def usage_snapshot(self) -> dict[str, ModelUsage]:
        return dict(self._ask("usage_snapshot"))

    def remaining(self, depth: int = 0) -> dict[str, Any]:
        return dict(self._ask("remaining", depth))

    def release_owner(self, prefix: str) -> int:
        """Give back what ``prefix`` and everything below it still hold (a dead worker)."""
        return int(ray.get(self._actor.release_owner.remote(prefix)))

    def held(self) -> int:
        return int(ray.get(self._actor.held.remote()))
