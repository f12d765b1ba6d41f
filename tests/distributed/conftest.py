"""A real Ray cluster for these tests: scripts/test-distributed.sh starts a head and a
worker node (the worker has the custom resource ``rlm_model``) in a private network
namespace and sets ``RLM_RAY_ADDRESS``; tests/conftest.py collects this folder only then."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
import ray


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.timeout(int(os.environ.get("RLM_RAY_TEST_TIMEOUT", "240"))))


@pytest.fixture(scope="session")
def address() -> Iterator[str]:
    address = os.environ["RLM_RAY_ADDRESS"]
    ray.init(address=address, log_to_driver=False)
    yield address
    ray.shutdown()


@pytest.fixture(scope="session")
def nodes(address: str) -> dict[str, str]:
    """The alive nodes: ``{"head": node id, "worker": node id}`` (the worker has rlm_model)."""
    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) == 2, alive
    worker = next(n["NodeID"] for n in alive if "rlm_model" in n["Resources"])
    head = next(n["NodeID"] for n in alive if n["NodeID"] != worker)
    return {"head": head, "worker": worker}


def wait_idle(timeout_s: float = 30.0) -> float:
    """Wait until no task holds a CPU of the cluster; return how long that took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if ray.available_resources().get("CPU", 0) >= ray.cluster_resources()["CPU"]:
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"tasks still hold CPUs after {timeout_s}s: "
                         f"{ray.available_resources()} of {ray.cluster_resources()}")
