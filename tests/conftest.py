"""Shared fixtures: an isolated user dir, no provider keys, scripted backends, the embedded
model (loaded once a session, for the tests marked ``model``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from rlm.backends.scripted import ScriptedBackend

#: tests/distributed need a Ray cluster: scripts/test-distributed.sh starts one (in a
#: private network namespace) and sets RLM_RAY_ADDRESS; scripts/test.sh runs it.
collect_ignore = [] if os.environ.get("RLM_RAY_ADDRESS") else ["distributed"]


def pytest_report_header(config: pytest.Config) -> str:
    if os.environ.get("RLM_RAY_ADDRESS"):
        return f"ray cluster: {os.environ['RLM_RAY_ADDRESS']}"
    return "tests/distributed: not collected (run scripts/test-distributed.sh for them)"

PROVIDER_KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENROUTER_API_KEY", "GROQ_API_KEY")


@pytest.fixture(autouse=True)
def user_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every test gets its own RLM_USER_PATH."""
    path = tmp_path_factory.mktemp("rlm-user")
    monkeypatch.setenv("RLM_USER_PATH", str(path))
    return path


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees a real provider key."""
    for key in PROVIDER_KEYS:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedBackend]]:
    """Build scripted backends: ``scripted(["reply 1", "reply 2"], cost_per_call=0.01)``."""
    made: list[ScriptedBackend] = []

    def make(responses, **kwargs) -> ScriptedBackend:
        backend = ScriptedBackend(responses, **kwargs)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture(scope="session")
def local_model_path():
    """The assembled default GGUF (assembled from its chunk packages on first use)."""
    from rlm.backends.local_models import DEFAULT_MODEL, ensure_model

    return ensure_model(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def local_backend(local_model_path):
    """One loaded embedded model shared by the tests of this session."""
    from rlm.backends.local import LocalBackend
    from rlm.backends.local_models import DEFAULT_MODEL

    backend = LocalBackend(DEFAULT_MODEL)
    backend.warm_up()
    yield backend
    backend.close()


def repl(code: str) -> str:
    """A model reply made of one ```repl block."""
    return f"```repl\n{code}\n```"
