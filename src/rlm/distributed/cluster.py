"""How rlm reaches a Ray cluster: the options users pass, and the recipe workers build from.

``RayOptions`` is what ``executor_kwargs`` holds (``RLM(..., executor="ray",
executor_kwargs={...})``).  A ``Recipe`` is an ``RLM``'s constructor arguments, pickled
once on the driver: each worker process builds one ``RLM`` per recipe and keeps it, so a
backend that loads a model (the embedded llama.cpp model, a vLLM client) loads once per
worker and serves every task that lands there.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray

from rlm.errors import ConfigError

if TYPE_CHECKING:
    from rlm.api import RLM

__all__ = ["RayOptions", "Recipe", "connect", "rlm_for"]


@dataclass(frozen=True)
class RayOptions:
    """Where and how remote work runs.

    - ``address``: the cluster (``"auto"``, ``"127.0.0.1:6379"``, ``"ray://head:10001"``);
      ``None`` joins the cluster of ``RAY_ADDRESS`` or starts a local one.
    - ``num_cpus``: CPUs each remote child or batch item holds (its REPL's work).
    - ``resources``: custom resources each one needs, e.g. ``{"llama": 1}`` to run only on
      nodes started with ``ray start --resources='{"llama": 4}'`` (models pinned to nodes).
    - ``spread``: spread work over nodes (``"SPREAD"``) rather than packing the first one.
    - ``runtime_env``: passed to Ray (packages, environment variables for the workers).
    - ``init``: more keywords for ``ray.init``.
    """

    address: str | None = None
    num_cpus: float = 1.0
    resources: dict[str, float] = field(default_factory=dict)
    spread: bool = True
    runtime_env: dict[str, Any] | None = None
    init: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any] | None) -> RayOptions:
        kwargs = dict(kwargs or {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ConfigError(f"unknown executor_kwargs {unknown}; known: {sorted(known)}")
        if "num_cpus" in kwargs and (isinstance(kwargs["num_cpus"], bool) or not isinstance(
                kwargs["num_cpus"], int | float) or kwargs["num_cpus"] < 0):
            raise ConfigError(f"num_cpus must be a number >= 0, got {kwargs['num_cpus']!r}")
        return cls(**kwargs)

    def task_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "max_retries": 0}
        if self.resources:
            options["resources"] = dict(self.resources)
        if self.spread:
            options["scheduling_strategy"] = "SPREAD"
        return options


_connect_lock = threading.Lock()


def connect(options: RayOptions) -> None:
    """Join the cluster (once per process; inside a Ray worker it is already joined)."""
    with _connect_lock:
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False,
                                  **options.init}
        if options.runtime_env is not None:
            kwargs["runtime_env"] = options.runtime_env
        ray.init(address=options.address, **kwargs)


@dataclass(frozen=True)
class Recipe:
    """An ``RLM``'s constructor arguments, as workers rebuild it (``key``: their hash)."""

    kwargs: dict[str, Any]
    key: str

    @classmethod
    def of(cls, kwargs: dict[str, Any]) -> Recipe:
        try:
            blob = ray.cloudpickle.dumps(kwargs)
        except Exception as exc:
            raise ConfigError(
                "executor='ray' sends the RLM's configuration to the workers, and it cannot "
                f"be pickled: {type(exc).__name__}: {exc}; pass backends and environments "
                "by name (backend='openai', backend_kwargs={...}) rather than as objects "
                "holding open clients") from exc
        return cls(kwargs, hashlib.sha256(blob).hexdigest()[:16])


_built: dict[str, RLM] = {}
_built_lock = threading.Lock()


def rlm_for(recipe: Recipe) -> RLM:
    """This worker's ``RLM`` for ``recipe``, built on first use and kept."""
    from rlm.api import RLM

    with _built_lock:
        rlm = _built.get(recipe.key)
        if rlm is None:
            rlm = _built[recipe.key] = RLM(**recipe.kwargs)
        return rlm
