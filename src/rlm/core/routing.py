"""Which backend answers which call: by depth (root vs sub-calls) and by registered name."""

from __future__ import annotations

from rlm.backends.base import LMBackend
from rlm.errors import UnknownModelError

__all__ = ["ModelRouter"]


class ModelRouter:
    """Routes LM calls.

    Depth 0 (the root's own turns) uses ``root``; every deeper call uses ``sub`` when given
    (the paper's setup: a strong root, a cheaper model for sub-calls), else ``root``.
    ``llm_query(prompt, model="name")`` picks a backend from ``named`` (or the root/sub
    backend whose ``model_name`` is ``name``); an unknown name raises ``UnknownModelError``.
    """

    def __init__(
        self,
        root: LMBackend,
        sub: LMBackend | None = None,
        named: dict[str, LMBackend] | None = None,
    ) -> None:
        self.root = root
        self.sub = sub
        self.named_backends = dict(named or {})

    def for_depth(self, depth: int) -> LMBackend:
        """The backend of a call at ``depth`` (0: the root's own turns)."""
        return self.root if depth == 0 or self.sub is None else self.sub

    def named(self, name: str) -> LMBackend:
        """The backend ``llm_query(..., model=name)`` asks for."""
        if name in self.named_backends:
            return self.named_backends[name]
        for backend in (self.root, self.sub):
            if backend is not None and backend.model_name == name:
                return backend
        known = sorted({*self.named_backends, self.root.model_name,
                        *([self.sub.model_name] if self.sub else [])})
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(known)}")

    def all(self) -> list[LMBackend]:
        """Every distinct backend, root first."""
        seen: dict[int, LMBackend] = {}
        for backend in (self.root, self.sub, *self.named_backends.values()):
            if backend is not None:
                seen.setdefault(id(backend), backend)
        return list(seen.values())

    def unpriced(self) -> list[str]:
        """The model names whose price is unknown (``LMBackend.prices_known``)."""
        return [backend.model_name for backend in self.all() if not backend.prices_known]

    def secrets(self) -> list[str]:
        """Every backend's secrets (API keys), for the trace's scrubber."""
        return [s for backend in self.all() for s in backend.secrets()]
