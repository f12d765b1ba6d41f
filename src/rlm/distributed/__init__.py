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
