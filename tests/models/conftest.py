"""Fixtures for the tests that run the embedded model for real (marker ``model``)."""

from __future__ import annotations

import pytest

from rlm.backends.local import LocalBackend
from rlm.backends.local_models import DEFAULT_MODEL


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/models/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.model)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def local_model_path():
    """The assembled default GGUF (assembled from its chunk packages on first use)."""
    from rlm.backends.local_models import ensure_model

    return ensure_model(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def local_backend(local_model_path):
    """One loaded embedded model shared by the tests of this session."""
    backend = LocalBackend(DEFAULT_MODEL)
    backend.warm_up()
    yield backend
    backend.close()
