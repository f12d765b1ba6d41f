"""What runs on a Ray worker: one child RLM of a tree, or one completion of a batch.

Both build (once per worker process) the ``RLM`` of the driver's recipe, spend from the
driver's ledger through a ``RemoteBudget``, and send their trace events back: a child's
through the run's relay as they happen, a batch item's with its result.
"""

from __future__ import annotations

from typing import Any

import ray

from rlm.core.engine import Run
from rlm.core.limits import Budget
from rlm.distributed.cluster import Recipe, rlm_for
from rlm.distributed.ledger import LedgerHandle, RemoteBudget
from rlm.distributed.relay import RelaySink, where
from rlm.result import RLMResult
from rlm.trace.sinks import MemorySink
from rlm.types import NodeRef

__all__ = ["run_batch_item", "run_call", "run_child"]


@ray.remote
def run_child(recipe: Recipe, ledger: LedgerHandle, relay: Any, node: NodeRef, prompt: str,
              context: Any, schema: dict[str, Any] | None) -> str:
    """Run the child ``node`` of a tree here and return its answer."""
    rlm = rlm_for(recipe)
    budget = RemoteBudget(ledger)
    sink = RelaySink(relay)
    run = Run(rlm.engine, sink, prompt, session=None, root_environment=None,
              trace_path=None, budget=budget)
    children = rlm.engine.children
    if children is not None:
        children.adopt(run, relay)  # type: ignore[attr-defined]
    try:
        return run.run_child(node, prompt, context, schema)
    finally:
        if children is not None:
            children.forget(run)  # type: ignore[attr-defined]
        sink.flush()
        budget.close()


@ray.remote
def run_batch_item(recipe: Recipe, question: str | None, context: Any,
                   ledger: LedgerHandle | None, schema: dict[str, Any] | None
                   ) -> tuple[RLMResult, list[dict[str, Any]], dict[str, Any]]:
    """One completion of a batch: its result, its trace events, and where it ran.

    ``ledger``: the batch's shared budget, spent from on top of the completion's own.
    An error comes back as the exception (with ``partial``), raised on the driver."""
    rlm = rlm_for(recipe)
    above = None if ledger is None else RemoteBudget(ledger)
    memory = MemorySink()
    try:
        budget = Budget(rlm.limits, parent=above)
        result = rlm.engine.run(question, context, sink=memory, budget=budget, schema=schema)
        return result, [e.to_dict() for e in memory.events], where()
    finally:
        if above is not None:
            above.close()


@ray.remote
def run_call(function: Any, arguments: tuple[Any, ...]) -> Any:
    """``function(*arguments)`` on a worker (``RayExecutor.map``: a bench job, say)."""
    return function(*arguments)
