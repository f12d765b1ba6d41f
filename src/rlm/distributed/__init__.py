"""Running on a Ray cluster (extra ``ray``): child RLMs and batches as Ray tasks, with
one ledger for the whole tree or batch.  See docs/distributed.md.

- ``ledger``: the ``Budget`` as a Ray actor, and the proxy every process spends through;
- ``relay``: trace events of remote nodes carried back to the driver's sink;
- ``children``: ``rlm_query`` children as tasks (``RLM(executor="ray")``);
- ``batch``: ``RLM.batch(..., executor="ray")``;
- ``worker``: what those tasks run;
- ``cluster``: options, connecting, and the recipe workers rebuild the ``RLM`` from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rlm.distributed.children import RayChildren
from rlm.distributed.cluster import RayOptions, Recipe

if TYPE_CHECKING:
    from rlm.api import RLM
    from rlm.batch import OnResult
    from rlm.result import RLMResult

__all__ = ["RayChildren", "RayExecutor", "RayOptions"]


class RayExecutor:
    """``executor="ray"``: what an ``RLM`` sends to the cluster, and how."""

    def __init__(self, kwargs: dict[str, Any], recipe: dict[str, Any]) -> None:
        self.options = RayOptions.from_kwargs(kwargs)
        self.recipe = Recipe.of(recipe)

    def children(self) -> RayChildren:
        return RayChildren(self.recipe, self.options)

    def batch(self, rlm: RLM, items: list[tuple[Any, Any]], *, batch_budget: float | None,
              max_in_flight: int, schema: Any, on_result: OnResult | None
              ) -> list[RLMResult]:
        from rlm.distributed.batch import run_ray_batch

        return run_ray_batch(rlm, self.recipe, self.options, items, batch_budget=batch_budget,
                             max_in_flight=max_in_flight, schema=schema, on_result=on_result)

    def map(self, function: Callable[..., Any], arguments: Sequence[tuple[Any, ...]], *,
            on_result: Callable[[int, Any], None], max_in_flight: int) -> None:
        """``function(*args)`` for each of ``arguments`` as Ray tasks, at most
        ``max_in_flight`` at once; ``on_result(index, value)`` as each returns (``value``
        is the exception when it failed or was lost).  An interrupt cancels the rest."""
        import ray

        from rlm.distributed.cluster import connect
        from rlm.distributed.worker import run_call

        connect(self.options)
        task = run_call.options(**self.options.task_options())
        function_ref = ray.put(function)
        queue = list(enumerate(arguments))[::-1]
        pending: dict[Any, int] = {}
        try:
            while queue or pending:
                while queue and len(pending) < max_in_flight:
                    index, args = queue.pop()
                    pending[task.remote(function_ref, args)] = index
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    index = pending.pop(ref)
                    try:
                        value = ray.get(ref)
                    except Exception as exc:
                        value = exc
                    on_result(index, value)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
