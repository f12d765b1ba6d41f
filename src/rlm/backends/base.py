"""The interface every language model backend implements."""

from __future__ import annotations

import asyncio
import os
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from rlm.errors import MissingKeyError
from rlm.types import Completion, CompletionRequest, estimate_tokens

__all__ = ["LMBackend", "resolve_key"]


class LMBackend(ABC):
    """A language model that turns a ``CompletionRequest`` into a ``Completion``.

    Contract:
    - ``complete`` is thread-safe: the LM handler calls it from many threads at once.
    - It returns usage and ``cost_usd`` on the ``Completion`` and keeps no counters: the
      shared ``Budget`` adds costs up.
    - It raises ``rlm.BackendError`` subclasses, never provider SDK exceptions.
    - ``acomplete`` is the async twin; the default runs ``complete`` in a worker thread.
    - ``request.response_schema`` (a JSON Schema) is enforced where the model can be made
      to (``enforces_schema``), passed on where a provider takes it, else ignored.
    - Whoever creates a backend closes it (``close()`` or ``with backend:``).
    """

    name: ClassVar[str] = "base"
    #: Environment variable holding the API key, for backends that need one.
    key_env_var: ClassVar[str | None] = None
    #: Which wording of the prompts suits this model (``rlm.core.prompts.PROFILES``).
    prompt_profile: ClassVar[str] = "default"
    #: Whether a reply always matches ``request.response_schema`` (a grammar constrains the
    #: decoding).  Either way the LM handler parses and validates every typed reply; a
    #: backend that cannot enforce a schema simply ignores it.
    enforces_schema: ClassVar[bool] = False

    model_name: str = "unknown"
    #: The model's window in tokens, when known: a node's history is compacted before it
    #: nears it (``rlm.core.compaction``); ``None``: never compacted.
    context_window: int | None = None

    @abstractmethod
    def complete(self, request: CompletionRequest) -> Completion:
        """Run one completion."""

    async def acomplete(self, request: CompletionRequest) -> Completion:
        return await asyncio.to_thread(self.complete, request)

    def estimate_cost(self, request: CompletionRequest) -> float | None:
        """The likely USD cost of ``request`` before it runs (``None`` if unknown).

        The ledger refuses a call whose estimate does not fit in the remaining budget.
        """
        return 0.0

    @property
    def prices_known(self) -> bool:
        """Whether ``estimate_cost`` can price a call: ``max_budget`` needs every price."""
        probe = CompletionRequest(messages=[{"role": "user", "content": "x"}])
        return self.estimate_cost(probe) is not None

    def estimate_tokens(self, request: CompletionRequest) -> int:
        """The likely input tokens of ``request`` (used for ``max_tokens``)."""
        return estimate_tokens(request.prompt_chars)

    def secrets(self) -> list[str]:
        """Values that must never appear in a trace or a log (API keys)."""
        return []

    def describe(self) -> dict[str, Any]:
        """A JSON-safe description for traces: never includes secrets."""
        return {"backend": self.name, "model": self.model_name}

    def close(self) -> None:
        """Release connections or loaded weights (nothing by default)."""
        return None

    async def aclose(self) -> None:
        self.close()

    def __enter__(self) -> LMBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_key(explicit: str | None, env_var: str | None, *, backend: str) -> str:
    """Return the API key: the explicit value, else the environment variable, else raise."""
    if explicit:
        return explicit
    if env_var and os.environ.get(env_var):
        return os.environ[env_var]
    hint = f"set the {env_var} environment variable or " if env_var else ""
    raise MissingKeyError(
        f"No API key for backend {backend!r}: {hint}pass backend_kwargs={{'api_key': ...}}"
    )
