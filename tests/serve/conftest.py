"""Fixtures for the server tests: a shared ``rlm serve`` over scripted profiles, and a
factory for servers started with other options."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from tests.serve.live import LiveServer, start, write_setup


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The config file, scripts and data directory of this module's servers."""
    return write_setup(tmp_path_factory.mktemp("serve"))


def _launch(setup: dict[str, Path], root: Path, *extra: str,
            env: dict[str, str] | None = None) -> LiveServer:
    traces = root / "traces"
    return start(["serve", "--config", str(setup["config"]), "--port", "0",
                  "--trace-dir", str(traces), "--data-dir", str(setup["data"]), *extra],
                 home=root / "home", trace_dir=traces, log=root / "server.log", env=env)


@pytest.fixture(scope="module")
def server(setup: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[LiveServer]:
    """One ``rlm serve`` for the tests that change nothing server-wide."""
    live = _launch(setup, tmp_path_factory.mktemp("server"))
    yield live
    live.stop()


@pytest.fixture
def launch(setup: dict[str, Path], tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """``launch("--api-key", "k", ..., env={...})``: a server of its own, stopped after
    the test."""
    started: list[LiveServer] = []

    def make(*extra: str, env: dict[str, str] | None = None) -> LiveServer:
        root = tmp_path / f"server-{len(started)}"
        root.mkdir()
        live = _launch(setup, root, *extra, env=env)
        started.append(live)
        return live

    yield make
    for live in started:
        live.stop()


@pytest.fixture
def client() -> Iterator[Callable[..., object]]:
    """``client(server, key="k", timeout=1.0)``: an ``openai.OpenAI`` for ``server`` (no
    retries), closed after the test."""
    openai = pytest.importorskip("openai")
    made: list[object] = []

    def make(server: LiveServer, key: str = "unused", **options: object) -> object:
        instance = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0,
                                 **options)
        made.append(instance)
        return instance

    yield make
    for instance in made:
        instance.close()  # type: ignore[attr-defined]
