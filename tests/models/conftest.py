"""Fixtures for the tests that run the embedded model for real (marker ``model``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/models/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.model)
            item.add_marker(pytest.mark.slow)


# ``local_model_path`` and ``local_backend`` live in tests/conftest.py (the backend
# contract suite uses them too).


# -- a real llama.cpp server (``python -m llama_cpp.server``) ---------------------------------
#: ``python -m llama_cpp.server``, with the model loaded as the local backend loads it (no
#: weight repacking on a CPU with AMX, where llama.cpp 0.3.x crashes in decode).
_SERVER_MAIN = (
    "import runpy, sys, llama_cpp\n"
    "from rlm.backends.local import without_weight_repacking\n"
    "sys.argv[0] = 'llama_cpp.server'\n"
    "with without_weight_repacking(llama_cpp):\n"
    "    runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)\n"
)
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaServer:
    """One ``llama_cpp.server`` process on 127.0.0.1 serving the default GGUF.

    ``start()`` launches it with ``sys.executable`` and waits (bounded) until
    ``GET /v1/models`` answers, failing with the server's stderr if it dies or never
    answers; ``stop()`` terminates it, kills it after a grace period and checks it exited.
    The server's stdout and stderr go to files in ``log_dir`` (a pipe nobody reads
    would fill up and block the server).
    """

    READY_TIMEOUT_S = 300.0
    GRACE_S = 10.0

    def __init__(self, model_path: str | os.PathLike[str], log_dir: Path, *,
                 n_ctx: int = 4096, n_threads: int = 2) -> None:
        self.model_path = str(model_path)
        self.log_dir = Path(log_dir)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None  # set by stop()
        self._logs: list[Any] = []

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The base URL to give the openai backend."""
        return f"{self.root_url}/v1"

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"llama-server-{self.port}.stderr"

    def stderr_tail(self, chars: int = 4000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def command(self) -> list[str]:
        return [sys.executable, "-c", _SERVER_MAIN, "--model", self.model_path,
                "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
                "--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads),
                "--use_mlock", "False"]

    def start(self) -> LlamaServer:
        for _ in range(3):  # the free port may be taken before the server binds it
            self.port = _free_port()
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"llama-server-{self.port}.stdout", "wb")  # noqa: SIM115
            err = open(self.stderr_path, "wb")  # noqa: SIM115
            self._logs += [out, err]
            self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=err)
            try:
                self._wait_ready()
                return self
            except _AddressInUse:
                self.stop()
            except BaseException:
                self.stop()
                raise
        pytest.fail("llama_cpp.server: no free port after 3 tries")

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.READY_TIMEOUT_S
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                code = self.process.poll()
                if code is not None:
                    tail = self.stderr_tail()
                    if "address already in use" in tail.lower():
                        raise _AddressInUse
                    pytest.fail(f"llama_cpp.server exited with code {code} before it was "
                                f"ready; stderr:\n{tail}")
                try:
                    if client.get(f"{self.url}/models").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.25)
        tail = self.stderr_tail()
        pytest.fail(f"llama_cpp.server did not answer GET /v1/models within "
                    f"{self.READY_TIMEOUT_S:.0f} s; stderr:\n{tail}")

    def warm_up(self) -> None:
        """One tiny completion: pages the weights in, so the first test is not slow."""
        body = {"model": "local", "max_tokens": 1,
                "messages": [{"role": "user", "content": "Hi"}]}
        response = httpx.post(f"{self.url}/chat/completions", json=body,
                              timeout=self.READY_TIMEOUT_S)
        assert response.status_code == 200, response.text

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, no grace: what a crash looks like to clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()

    def stop(self) -> int | None:
        """Terminate, kill after ``GRACE_S``; return the exit code (the process is gone)."""
        process, self.process = self.process, None
        code = None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=self.GRACE_S)
                except subprocess.TimeoutExpired:
                    process.kill()
            code = process.wait(timeout=self.GRACE_S)
            assert process.poll() is not None, "the llama.cpp server is still running"
            self.returncode = code
        for log in self._logs:
            log.close()
        self._logs.clear()
        return code


class _AddressInUse(Exception):
    pass


def _needs_server_extra() -> None:
    pytest.importorskip("llama_cpp.server.app",
                        reason="needs llama-cpp-python[server] (fastapi, uvicorn, ...)")


@pytest.fixture(scope="session")
def llama_server(local_model_path, tmp_path_factory):
    """A real llama.cpp server shared by the session (started once, warmed up)."""
    _needs_server_extra()
    server = LlamaServer(local_model_path, tmp_path_factory.mktemp("llama-server"))
    server.start()
    try:
        server.warm_up()
        yield server
    finally:
        server.stop()
        assert server.returncode is not None  # no leftover process


@pytest.fixture
def fresh_llama_server(local_model_path, tmp_path):
    """A second llama.cpp server of its own, for a test that kills it."""
    _needs_server_extra()
    server = LlamaServer(local_model_path, tmp_path / "llama-server")
    server.start()
    try:
        server.warm_up()
        yield server
    finally:
        server.stop()
        assert server.returncode is not None  # no leftover process
