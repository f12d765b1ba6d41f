"""``RLM.batch(..., executor="ray")``: each completion a Ray task, spread over the nodes.

The batch's ledger is a ``LedgerActor``, so ``batch_budget`` holds across every node;
each item's own limits are kept on its worker.  Items are submitted at most
``max_in_flight`` at a time, taken as they finish (``on_result``), and a lost worker or
node fails only its item (an error result; what it held in the ledger is released).
``RLM.cancel()`` stops the items running and drops the ones not started.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import ray

from rlm.batch import OnResult, batch_ledger_limits, failed_result
from rlm.bridge import schema as schemas
from rlm.distributed.children import GRACE_S, SharedContexts, await_task
from rlm.distributed.cluster import RayOptions, Recipe, connect
from rlm.distributed.ledger import RemoteBudget
from rlm.errors import Cancelled
from rlm.result import RLMResult
from rlm.trace.events import TraceEvent

if TYPE_CHECKING:
    from rlm.api import RLM

__all__ = ["run_ray_batch"]


def run_ray_batch(rlm: RLM, recipe: Recipe, options: RayOptions,
                  items: list[tuple[Any, Any]], *, batch_budget: float | None,
                  max_in_flight: int, schema: Any, on_result: OnResult | None
                  ) -> list[RLMResult]:
    from rlm.distributed.worker import run_batch_item

    connect(options)
    json_schema = None if schema is None else schemas.to_json_schema(schema)
    ledger = RemoteBudget.create(batch_ledger_limits(batch_budget))
    results: list[RLMResult | None] = [None] * len(items)
    recipe_ref = ray.put(recipe)
    contexts = SharedContexts()  # one object-store copy per distinct context

    pending: dict[Any, tuple[int, float]] = {}
    queue = list(enumerate(items))
    queue.reverse()
    task = run_batch_item.options(**options.task_options())
    try:
        with rlm.engine.tracking(ledger):
            while queue or pending:
                while queue and len(pending) < max_in_flight and not ledger.cancel_event.is_set():
                    index, (prompt, context) = queue.pop()
                    question, data = rlm.split(prompt, context)
                    handle = ledger.handle.below(f"item-{index}")
                    ref = task.remote(recipe_ref, question, contexts.put(data), handle, json_schema)
                    pending[ref] = (index, time.monotonic())
                if ledger.cancel_event.is_set():
                    _stop(pending, ledger, results)
                    reason = ledger.tripped or Cancelled("the batch was cancelled")
                    for index, _ in queue:
                        results[index] = failed_result(type(reason)(str(reason)),
                                                       time.monotonic())
                    queue.clear()
                    break
                done, _ = ray.wait(list(pending), num_returns=1, timeout=0.05)
                for ref in done:
                    index, started = pending.pop(ref)
                    results[index] = _taken(rlm, ref, ledger, index, started, schema)
                    if on_result is not None:
                        on_result(index, results[index])  # type: ignore[arg-type]
    finally:
        ledger.shutdown()
    return [r for r in results if r is not None]


def _taken(rlm: RLM, ref: Any, ledger: RemoteBudget, index: int, started: float,
           schema: Any) -> RLMResult:
    try:
        result, events, placement = await_task(ref, ledger, f"{ledger.owner}/item-{index}",
                                               f"batch item {index}")
    except Exception as exc:
        return failed_result(exc, started)
    result.placement = placement
    rlm.write_trace(result, [TraceEvent.from_dict(e) for e in events])
    return rlm.typed(result, schema)


def _stop(pending: dict[Any, tuple[int, float]], ledger: RemoteBudget,
          results: list[RLMResult | None]) -> None:
    """The batch was cancelled: items under way get ``GRACE_S`` to return, then are killed."""
    deadline = time.monotonic() + GRACE_S
    while pending and time.monotonic() < deadline:
        done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.1)
        for ref in done:
            index, started = pending.pop(ref)
            try:
                result, _events, placement = ray.get(ref)
                result.placement = placement
                results[index] = result
            except Exception as exc:
                results[index] = failed_result(exc, started)
    for ref, (index, started) in pending.items():
        ray.cancel(ref, force=True)
        results[index] = failed_result(Cancelled("the batch was cancelled"), started)
    pending.clear()
