"""Runs requests for both servers: admission (the concurrency gate, the daily cap, the
request's limits), one call tree per request in a worker thread with one trace file,
and cancellation of that tree when the caller goes away."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from rlm.api import RLM
from rlm.core.limits import Limits
from rlm.errors import ConfigError, RLMError
from rlm.result import RLMResult
from rlm.serve.guard import Refused, SpendLedger, data_path, merge_limits
from rlm.serve.profiles import Catalog, Profile
from rlm.trace.sinks import JsonlSink, TraceSink

__all__ = ["CANCEL_WAIT_S", "Service", "ServiceConfig", "Ticket", "new_trace_id"]

T = TypeVar("T")

#: How long a cancelled run may take to wind down before its caller stops waiting.
CANCEL_WAIT_S = 30.0
_POLL_S = 0.02


def new_trace_id() -> str:
    """A trace file's stem, as ``RLM(trace=directory)`` names its files."""
    return f"rlm-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class ServiceConfig:
    """Server-wide settings shared by ``rlm serve`` and ``rlm mcp``.

    ``trace_dir``: one JSONL trace per request (``None``: no trace files).  ``data_dir``:
    the only folder a request may name a file of.  ``max_concurrent``: runs under way at
    once; one more is refused (429), not queued.  ``daily_budget``: USD the server may
    spend per UTC day (``None``: no cap), recorded in ``spend_file`` when given.
    ``secrets``: strings never written to a trace (the server's API key).
    """

    trace_dir: Path | None = None
    data_dir: Path | None = None
    max_concurrent: int = 8
    daily_budget: float | None = None
    spend_file: Path | None = None
    secrets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.max_concurrent, bool) or not isinstance(self.max_concurrent, int) \
                or self.max_concurrent < 1:
            raise ConfigError(f"max_concurrent must be a whole number >= 1, "
                              f"got {self.max_concurrent!r}")
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise ConfigError(f"--data-dir {self.data_dir} is not a directory")


@dataclass
class Ticket:
    """An admitted run: its profile, its effective limits and the room it holds."""

    profile: Profile
    limits: Limits
    reserved_usd: float | None
    trace_id: str = field(default_factory=new_trace_id)
    released: bool = False


class Service:
    """Admits and runs requests over a ``Catalog``; one instance per server process.

    ``admit`` (on the event loop) either returns a ``Ticket`` or raises ``Refused``;
    ``run`` answers it and always gives the ticket back, also when the caller is
    cancelled (then the tree is cancelled and its winding down awaited).
    """

    def __init__(self, catalog: Catalog, config: ServiceConfig | None = None) -> None:
        self.catalog = catalog
        self.config = config or ServiceConfig()
        self.ledger = SpendLedger(self.config.daily_budget, self.config.spend_file)
        if self.config.daily_budget is not None:
            for profile in catalog.profiles.values():  # every run needs a max_budget then
                catalog.open(profile, profile.limits.with_overrides(max_budget=1.0)).close()
        self._lock = threading.Lock()
        self.active = 0
        self._limiter: anyio.CapacityLimiter | None = None

    # -- admission ------------------------------------------------------------------------------
    def profile(self, name: str | None) -> Profile:
        try:
            return self.catalog.get(name)
        except KeyError:
            known = ", ".join(self.catalog.profiles)
            raise Refused(404, f"the model {name!r} does not exist; this server has: {known}",
                          code="model_not_found") from None

    def admit(self, model: str | None, limits: Any = None) -> Ticket:
        """A ticket for one run of profile ``model`` with the ``limits`` asked for."""
        profile = self.profile(model)
        effective = merge_limits(profile.limits, limits)
        with self._lock:
            if self.active >= self.config.max_concurrent:
                raise Refused(429, f"{self.active} runs are under way, the most this server "
                              "runs at once; retry later", kind="rate_limit_error",
                              code="concurrency_limit", retry_after_s=1)
            reserved = self.ledger.reserve(effective.max_budget)
            self.active += 1
        if reserved is not None:
            effective = effective.with_overrides(max_budget=reserved)
        return Ticket(profile, effective, reserved)

    def release(self, ticket: Ticket, spent_usd: float) -> None:
        """Give ``ticket`` back (once) and record what its run spent."""
        with self._lock:
            if ticket.released:
                return
            ticket.released = True
            self.active -= 1
        self.ledger.settle(ticket.reserved_usd, spent_usd)

    def context_path(self, given: Any) -> Path:
        """A request's ``context_path`` as a path inside the data directory."""
        return data_path(self.config.data_dir, given)

    # -- running --------------------------------------------------------------------------------
    def trace_path(self, trace_id: str) -> Path | None:
        return None if self.config.trace_dir is None else (
            self.config.trace_dir / f"{trace_id}.jsonl")

    def _sinks(self, ticket: Ticket, extra: list[TraceSink]) -> list[TraceSink]:
        path = self.trace_path(ticket.trace_id)
        secrets = [*self.config.secrets, *self.catalog.secrets(ticket.profile)]
        return [*([] if path is None else [JsonlSink(path, secrets=secrets)]), *extra]

    async def run(self, ticket: Ticket, question: str | None, context: Any = None, *,
                  sinks: list[TraceSink] | None = None,
                  temperature: float | None = None) -> RLMResult:
        """Answer one admitted request; the ticket is released whatever happens.

        Cancelling the calling task cancels the call tree (it stops with
        ``stop_reason="cancelled"``) and waits for it to wind down (its budget is freed).
        A failure of the backend or the environment raises its ``RLMError``.
        """
        holder: dict[str, Any] = {}
        try:
            all_sinks = self._sinks(ticket, list(sinks or []))
            try:
                model = self.catalog.open(ticket.profile, ticket.limits, trace=all_sinks,
                                          temperature=temperature)
            except BaseException:
                for sink in all_sinks:
                    sink.close()
                raise

            def work() -> RLMResult:
                try:
                    holder["result"] = _complete(model, question, context)
                except RLMError as exc:
                    holder["result"] = getattr(exc, "partial", None)
                    raise
                return holder["result"]

            return await self.call(work, model.cancel)
        finally:
            self.release(ticket, getattr(holder.get("result"), "cost_usd", 0.0) or 0.0)

    async def call(self, work: Callable[[], T], cancel: Callable[[], None]) -> T:
        """``work()`` in a worker thread; if the caller is cancelled meanwhile, ``cancel()``
        and wait (at most ``CANCEL_WAIT_S``) until ``work`` has returned."""
        if self._limiter is None:  # one per server; sized so admitted runs never queue
            self._limiter = anyio.CapacityLimiter(self.config.max_concurrent + 8)
        finished = threading.Event()

        def body() -> T:
            try:
                return work()
            finally:
                finished.set()

        try:
            return await anyio.to_thread.run_sync(body, abandon_on_cancel=True,
                                                  limiter=self._limiter)
        except anyio.get_cancelled_exc_class():
            cancel()
            with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_WAIT_S):
                while not finished.is_set():
                    await anyio.sleep(_POLL_S)
            raise


def _complete(model: RLM, question: str | None, context: Any) -> RLMResult:
    with model:
        if context is None:
            return model.completion(question)
        return model.completion(question, context=context)
