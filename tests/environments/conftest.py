"""The environments every shared test runs against (one suite, parametrised by name)."""

from __future__ import annotations

import os

import pytest

from rlm import registry

#: Registry names of the environments under test; each must pass the whole shared suite.
ENVIRONMENTS = ["local", "subprocess", "pyodide", "sandbox", "gvisor", "ipython", "docker",
                "remote-local"]
#: Those that can stop a runaway block (``Environment.supports_timeout``).
TIMEOUT_ENVIRONMENTS = [
    name for name in ENVIRONMENTS if registry.get_environment_class(name).supports_timeout
]


@pytest.fixture(params=ENVIRONMENTS)
def env_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def env_factory(env_name: str):
    """Builds environments of the parametrised kind and closes them after the test."""
    made = []

    def make(**kwargs):
        env = registry.create_environment(env_name, kwargs)
        made.append(env)
        return env

    yield make
    for env in made:
        env.close()


def require_available(name: str) -> None:
    """Skip a test of an environment this machine cannot run (``unavailable_reason``);
    under CI (``CI`` set) fail instead: CI must run every environment."""
    reason = registry.get_environment_class(name).unavailable_reason()
    if reason is not None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{name}: {reason}")


@pytest.fixture(autouse=True)
def _environment_available(request: pytest.FixtureRequest) -> None:
    callspec = getattr(request.node, "callspec", None)
    for value in callspec.params.values() if callspec else ():
        if isinstance(value, str) and value in ENVIRONMENTS:
            require_available(value)
