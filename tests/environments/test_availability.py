"""Whether an environment can run here: each class's ``probe``, asked once per class."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from rlm.environments.base import Environment
from rlm.errors import EnvStartError, MissingDependencyError


class Counting(Environment):
    """An environment whose probe counts its runs and fails with ``failure`` (if any)."""

    runs = 0
    failure: Exception | None = None

    @classmethod
    def probe(cls) -> None:
        cls.runs += 1
        time.sleep(0.05)  # long enough for concurrent callers to overlap
        if cls.failure is not None:
            raise cls.failure

    def start(self, call: Any, tools: Any = None) -> None:
        self.check_available()

    def set_variable(self, name: str, value: Any) -> None:
        pass

    def execute(self, code: str, *, timeout_s: float | None = None) -> Any:
        pass

    def close(self) -> None:
        pass


def test_an_environment_with_nothing_to_check_is_available():
    class Plain(Counting):
        pass

    assert Plain.unavailable_reason() is None
    Plain().start(lambda message: {})
    assert Plain.runs == 1


def test_the_probe_runs_once_per_class_however_many_ask_at_once():
    class Missing(Counting):
        failure = EnvStartError("missing: the engine is not installed (apt-get install x)")

    reasons: list[str | None] = []
    threads = [threading.Thread(target=lambda: reasons.append(Missing.unavailable_reason()))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for _ in range(3):
        with pytest.raises(EnvStartError, match=r"^missing: the engine is not installed"):
            Missing().start(lambda message: {})
    assert reasons == [str(Missing.failure)] * 8
    assert Missing.runs == 1


def test_each_class_has_its_own_answer():
    class Missing(Counting):
        failure = MissingDependencyError("needs an extra: pip install 'rlm[x]'")

    class Present(Missing):
        failure = None
        runs = 0

    with pytest.raises(MissingDependencyError, match=r"pip install 'rlm\[x\]'"):
        Missing.check_available()
    Present.check_available()
    assert (Missing.unavailable_reason(), Present.unavailable_reason()) == (
        "needs an extra: pip install 'rlm[x]'", None)
    assert (Missing.runs, Present.runs) == (1, 1)


def test_each_refusal_is_a_fresh_error():
    class Missing(Counting):
        failure = EnvStartError("missing: no engine")

    errors = []
    for _ in range(2):
        with pytest.raises(EnvStartError) as raised:
            Missing.check_available()
        errors.append(raised.value)
    assert errors[0] is not errors[1] and str(errors[0]) == str(errors[1])
    assert errors[0] is not Missing.failure  # the remembered one's traceback does not grow


def test_a_probe_that_breaks_is_not_remembered():
    class Flaky(Counting):
        failure = TimeoutError("the check hung")

    with pytest.raises(TimeoutError):
        Flaky.unavailable_reason()
    Flaky.failure = None
    assert Flaky.unavailable_reason() is None
    assert Flaky.runs == 2
