"""``RLM.batch``: many completions, results in order, one failure never stops the others.

Each item is a whole completion with its own limits; ``batch_budget`` (USD) is one more
ledger that every item also spends from (``Budget(parent=...)``), so the batch as a whole
can never spend more.  Items run on a thread pool here (``executor="local"``) or as Ray
tasks across a cluster (``executor="ray"``, ``rlm.distributed.batch``).  ``RLM.cancel()``
stops every item still running.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from rlm.core.engine import ChildRunner, Engine
from rlm.core.limits import Budget, Ledger, Limits
from rlm.errors import ConfigError
from rlm.result import RLMResult
from rlm.trace.tree import TraceNode

__all__ = ["Completer", "Executor", "OnResult", "batch_ledger_limits", "failed_result",
           "run_batch"]

#: Called as each item finishes: ``(index, result)``, in the order they finish.
OnResult = Callable[[int, RLMResult], None]


class Completer(Protocol):
    """What a batch needs of an ``RLM``."""

    limits: Limits
    engine: Engine

    def complete_within(self, prompt: Any, context: Any = None, *,
                        root_prompt: str | None = None, schema: Any = None,
                        budget: Ledger | None = None) -> RLMResult: ...


class Executor(Protocol):
    """Somewhere else to run child RLMs and batch items (``registry``'s executors: ``"ray"``
    is ``rlm.distributed.RayExecutor``); made from the executor's keywords and the
    ``RLM``'s constructor arguments."""

    def children(self) -> ChildRunner: ...

    def batch(self, rlm: Any, items: list[tuple[Any, Any]], *, batch_budget: float | None,
              max_in_flight: int, schema: Any, on_result: OnResult | None
              ) -> list[RLMResult]: ...

    def map(self, function: Callable[..., Any], arguments: Sequence[tuple[Any, ...]], *,
            on_result: Callable[[int, Any], None], max_in_flight: int) -> None: ...
#: Turns are not what a batch ledger limits: each item has its own ``max_iterations``.
_UNBOUNDED_TURNS = 10**15


def batch_ledger_limits(batch_budget: float | None) -> Limits:
    return Limits(max_iterations=_UNBOUNDED_TURNS, max_budget=batch_budget)


def failed_result(exc: BaseException, started: float) -> RLMResult:
    """The result of an item that raised: the partial result when there is one."""
    message = f"{type(exc).__name__}: {exc}"
    partial = getattr(exc, "partial", None)
    if isinstance(partial, RLMResult):
        partial.stop_reason = "error"
        partial.error = message
        return partial
    run_id = getattr(exc, "run_id", None) or uuid.uuid4().hex[:16]
    return RLMResult(response="", stop_reason="error", cost_usd=0.0, usage={}, iterations=0,
                     elapsed_s=time.monotonic() - started, trace=TraceNode(run_id, None, 0),
                     run_id=run_id, error=message)


def items_of(prompts: Sequence[Any], contexts: Sequence[Any] | None
             ) -> list[tuple[Any, Any]]:
    if isinstance(prompts, str | bytes):
        raise ConfigError("batch() takes a list of prompts, not one string")
    prompts = list(prompts)
    if contexts is None:
        return [(prompt, None) for prompt in prompts]
    contexts = list(contexts)
    if len(contexts) != len(prompts):
        raise ConfigError(f"batch() got {len(prompts)} prompts and {len(contexts)} contexts")
    return list(zip(prompts, contexts, strict=True))


def run_batch(rlm: Completer, items: list[tuple[Any, Any]], *, batch_budget: float | None,
              max_concurrency: int, schema: Any, on_result: OnResult | None
              ) -> list[RLMResult]:
    """Run ``items`` on a pool of ``max_concurrency`` threads (see the module doc)."""
    ledger = Budget(batch_ledger_limits(batch_budget))
    results: list[RLMResult | None] = [None] * len(items)

    def one(prompt: Any, context: Any) -> RLMResult:
        started = time.monotonic()
        try:
            return rlm.complete_within(prompt, context, schema=schema,
                                       budget=Budget(rlm.limits, parent=ledger))
        except Exception as exc:  # an RLMError (with its partial result) or any other
            return failed_result(exc, started)

    pool = cf.ThreadPoolExecutor(max_workers=max(1, min(max_concurrency, len(items) or 1)),
                                 thread_name_prefix="rlm-item")
    try:
        with rlm.engine.tracking(ledger):
            futures = {pool.submit(one, p, c): i for i, (p, c) in enumerate(items)}
            for future in cf.as_completed(futures):
                index = futures[future]
                results[index] = future.result()
                if on_result is not None:
                    on_result(index, results[index])  # type: ignore[arg-type]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        ledger.close()
    return [r for r in results if r is not None]
