"""Fixtures for the benchmark harness: a scripted "perfect model" that plays every method."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest

from rlm.backends.scripted import ScriptedBackend
from rlm.bench.tasks import Instance
from tests.bench.oracle import oracle


@pytest.fixture
def perfect_model() -> Callable[[Iterable[Instance]], ScriptedBackend]:
    """``perfect_model(instances)``: a ScriptedBackend playing the oracle above."""
    made: list[ScriptedBackend] = []

    def make(instances: Iterable[Instance]) -> ScriptedBackend:
        backend = ScriptedBackend(oracle(list(instances)), model="perfect")
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()
