"""REPLs in sandboxes the host cannot be reached from, driven over HTTP.

``RemoteEnvironment`` is the one base of every cloud sandbox: it ships ``guest.py`` and
``broker.py`` (``rlm.bridge.broker``) into the sandbox, starts the broker there and talks
to it only through its URL, with a bearer token.  A poller thread long-polls the broker for
the LM requests of the sandbox code and answers each with the ``call`` given to
``start`` (the host's LM handler), so keys never enter the sandbox.  A cloud adapter only
says how to create the sandbox, copy files in, start a command and reach a port.
``LocalRemoteEnvironment`` (``remote_local.py``) runs the broker as a local process: the same
code path, for tests.  The broker's settings travel on its command line
(``rlm.bridge.broker.BrokerSettings``), each control message as ``POST /<op>``
(``rlm.bridge.protocol``), each value as the raw body of ``POST /set_var``
(``rlm.bridge.values``).
"""

from __future__ import annotations

import contextlib
import importlib
import secrets
import threading
import time
from abc import abstractmethod
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

import httpx

from rlm.bridge import protocol
from rlm.bridge.broker import BrokerSettings
from rlm.environments.base import Environment
from rlm.environments.files import RUNNER_FILES, encode_variable
from rlm.errors import EnvError, EnvStartError, MissingDependencyError, RLMError
from rlm.tools import Tool, shipped_tools
from rlm.types import ExecResult, HostCall

__all__ = ["RemoteEnvironment", "import_sdk"]


def import_sdk(module: str, extra: str) -> Any:
    """Import a cloud SDK, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"the {extra!r} environment needs the {module} package: pip install 'rlm[{extra}]'"
        ) from exc


class RemoteEnvironment(Environment):
    """A REPL in a sandbox, reached only over HTTP at the URL of its broker.

    Lifecycle of ``start``: ``provision()`` creates the sandbox, ``upload(files)`` copies
    the runtime and a one-time token file in, ``launch(argv)`` starts the broker in the
    background (it reads and deletes the token file: the token is never on a command line),
    ``broker_url()`` says where it answers; then ``GET /health`` is polled until it does.
    A start that fails calls ``teardown()``, and so does ``close()``.

    - ``block_timeout_s``: wall-clock limit of one block, enforced by the broker: the block
      is interrupted (variables kept); one that ignores it (a blocking C call) is abandoned
      and the REPL replaced (``context`` is back, the model's variables are gone).
    - ``request_timeout_s``: an LM request of the sandbox code that gets no reply fails.
    - ``host_timeout_s``: the broker fails pending LM requests once the host has not polled
      for this long (the host polls at least four times as often).
    - A sandbox that stops answering raises ``EnvError``; nothing waits unbounded.

    Tools are defined in the sandbox from their code (``rlm.tools``).
    """

    supports_persistence = True
    supports_timeout = True
    #: Where the shipped files go inside the sandbox.
    remote_dir: str = "/tmp/rlm"
    #: The sandbox's Python.
    python: str = "python3"
    #: The broker listens here, behind the cloud's tunnel or proxy.
    bind_host: str = "0.0.0.0"

    def __init__(self, *, block_timeout_s: float = 300.0, request_timeout_s: float = 900.0,
                 host_timeout_s: float = 60.0, start_timeout_s: float = 180.0,
                 capture_limit: int = protocol.CAPTURE_LIMIT, max_concurrent_calls: int = 32,
                 port: int = 8765) -> None:
        #: What the broker is launched with.
        self.settings = BrokerSettings(block_timeout_s=block_timeout_s,
                                       request_timeout_s=request_timeout_s,
                                       host_timeout_s=host_timeout_s, capture_limit=capture_limit)
        self.start_timeout_s = start_timeout_s
        self.max_concurrent_calls = max_concurrent_calls
        self.port = port
        self.base_url: str | None = None
        self._token = secrets.token_urlsafe(32)
        self._call: HostCall | None = None
        self._client: httpx.Client | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._poller: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._provisioned = False
        self._closed = False

    # -- what an adapter provides ------------------------------------------------------------
    @abstractmethod
    def provision(self) -> None:
        """Create (or attach to) the sandbox."""

    @abstractmethod
    def upload(self, files: dict[str, bytes]) -> None:
        """Write each ``{absolute sandbox path: content}``, creating folders."""

    @abstractmethod
    def launch(self, argv: list[str]) -> None:
        """Start ``argv`` in the sandbox in the background and return at once."""

    @abstractmethod
    def broker_url(self) -> str:
        """The URL at which the host reaches the broker's ``self.port``."""

    @abstractmethod
    def teardown(self) -> None:
        """Delete the sandbox; called once, also after a failed or partial start."""

    def request_headers(self) -> dict[str, str]:
        """Headers of every request to the broker (an adapter may add its proxy's)."""
        return {"Authorization": f"Bearer {self._token}"}

    def launch_broker_command(self) -> list[str]:
        folder = self.remote_dir
        return [self.python, f"{folder}/broker.py", "--bind", self.bind_host,
                "--port", str(self.port), "--token-file", f"{folder}/token",
                *self.settings.to_argv()]

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, call: HostCall, tools: Mapping[str, Tool] | None = None) -> None:
        if self._client is not None:
            return
        if self._closed:
            raise EnvError("the environment is closed")
        self._call = call
        sources = shipped_tools(tools, self.name)
        try:
            self._provisioned = True
            self.provision()
            self.upload(self._shipped_files())
            self.launch(self.launch_broker_command())
            self.base_url = self.broker_url().rstrip("/")
            self._client = httpx.Client(base_url=self.base_url, headers=self.request_headers(),
                                        timeout=httpx.Timeout(30.0, connect=10.0))
            self._wait_until_healthy()
            if sources:
                try:
                    self._control(protocol.Tools(sources), self.start_timeout_s)
                except EnvError as exc:
                    raise EnvStartError(str(exc)) from None
        except BaseException as exc:
            self._closed = True
            self._shut()
            if isinstance(exc, RLMError) or not isinstance(exc, Exception):
                raise
            raise EnvStartError(f"{self.name}: cannot start the sandbox: {exc}") from exc
        self._pool = ThreadPoolExecutor(self.max_concurrent_calls,
                                        thread_name_prefix=f"rlm-{self.name}-call")
        self._poller = threading.Thread(target=self._poll, name=f"rlm-{self.name}-poller",
                                        daemon=True)
        self._poller.start()

    def _shipped_files(self) -> dict[str, bytes]:
        files = {f"{self.remote_dir}/{name}": resources.files("rlm.bridge").joinpath(name)
                 .read_bytes() for name in RUNNER_FILES}
        files[f"{self.remote_dir}/token"] = self._token.encode()
        return files

    def _wait_until_healthy(self) -> None:
        assert self._client is not None
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            try:
                reply = self._client.get("/health", timeout=5.0)
                if reply.status_code == 200:
                    return
                raise EnvStartError(f"{self.name}: the broker answered /health with HTTP "
                                    f"{reply.status_code}")
            except httpx.TransportError as exc:
                if time.monotonic() > deadline:
                    raise EnvStartError(f"{self.name}: the broker did not answer within "
                                        f"{self.start_timeout_s:g}s: {exc}") from exc
            time.sleep(0.1)

    # -- the host's side of the LM broker ----------------------------------------------------
    def _poll(self) -> None:
        client, pool = self._client, self._pool
        assert client is not None and pool is not None
        wait_s = min(20.0, self.settings.host_timeout_s / 4)
        failures = 0
        while not self._stopping.is_set():
            try:
                reply = client.get("/pending", params={"wait": f"{wait_s:g}"},
                                   timeout=wait_s + 30.0)
                reply.raise_for_status()
                body = reply.json()
            except (httpx.HTTPError, ValueError, RuntimeError):
                # The sandbox may be restarting or gone; execute() reports that.  Back off.
                failures += 1
                self._stopping.wait(min(2.0, 0.05 * 2 ** failures))
                continue
            failures = 0
            if body.get("shutdown"):
                return
            for item in body.get("requests", []):
                try:
                    pool.submit(self._answer, client, item["id"], item["message"])
                except RuntimeError:  # the pool is shut: the environment is closing
                    return

    def _answer(self, client: httpx.Client, request_id: str, message: dict[str, Any]) -> None:
        assert self._call is not None
        try:
            reply = self._call(message)
        except Exception as exc:  # a bug in the handler must reach the sandbox as an error
            reply = protocol.error_reply(exc)
        # A reply that cannot be delivered fails in the sandbox within its bounds, where the
        # model sees it; nothing on the host waits for it.
        with contextlib.suppress(httpx.HTTPError, RuntimeError):
            client.post("/respond", json={"id": request_id, "reply": reply}, timeout=30.0)

    # -- the REPL ----------------------------------------------------------------------------
    def _post(self, path: str, body: dict[str, Any] | None, timeout_s: float,
              **request: Any) -> dict[str, Any]:
        if self._client is None:
            raise EnvError(f"{self.name}: start the environment first")
        try:
            reply = self._client.post(path, json=body,
                                      timeout=httpx.Timeout(timeout_s, connect=10.0), **request)
        except httpx.TimeoutException as exc:
            raise EnvError(f"{self.name}: the sandbox did not answer {path} within "
                           f"{timeout_s:g}s") from exc
        except httpx.TransportError as exc:
            raise EnvError(f"{self.name}: the sandbox cannot be reached ({exc}); it has "
                           "stopped or was killed") from exc
        if reply.status_code == 500:  # the sandbox's REPL runtime broke, not the model's code
            raise EnvError(f"{self.name}: the sandbox's REPL failed in {path}: "
                           f"{protocol.error_text(reply.json().get('error'))}")
        if reply.status_code != 200:
            raise EnvError(f"{self.name}: the broker refused {path}: HTTP "
                           f"{reply.status_code} {reply.text[:200]}")
        return reply.json()

    def _control(self, message: protocol.Control, timeout_s: float) -> dict[str, Any]:
        """``POST /<op>`` with the message's fields: a control message to the broker."""
        return self._post(f"/{message.type}", message.body(), timeout_s)

    def set_variable(self, name: str, value: Any) -> None:
        encoded = encode_variable(name, value, owner=self.name, to="a sandbox")
        size = encoded.size
        with self._lock:
            self._post(f"/{protocol.SetVar.type}", None, self.start_timeout_s + size / 20e6,
                       params={"name": name, "format": encoded.format},
                       content=encoded.pieces(), headers={"Content-Length": str(size)})

    def execute(self, code: str, *, timeout_s: float | None = None) -> ExecResult:
        block = self.settings.block_timeout_s
        limit = block if timeout_s is None else min(timeout_s, block)
        with self._lock:
            reply = self._control(protocol.Exec(code, limit),
                                  limit + self.settings.grace_s + 30.0)
        return ExecResult.from_dict(reply)

    def interrupt(self) -> None:
        """Stop the block under way: ``POST /interrupt`` to the broker, from a thread of its
        own (the caller's thread waits in ``execute``)."""
        client = self._client
        if client is None:
            return

        def send() -> None:
            with contextlib.suppress(httpx.HTTPError, RuntimeError):
                client.post("/interrupt", json={}, timeout=10.0)

        threading.Thread(target=send, name=f"rlm-{self.name}-interrupt", daemon=True).start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._shut()

    def _shut(self) -> None:
        self._stopping.set()
        client, self._client = self._client, None
        if client is not None:
            # Ends the broker and wakes the poller's long poll; a dead broker fails at once.
            with contextlib.suppress(httpx.HTTPError):
                client.post(f"/{protocol.Shutdown.type}", json={}, timeout=5.0)
        if self._poller is not None:
            self._poller.join(timeout=10.0)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if client is not None:
            client.close()
        if self._provisioned:
            self._provisioned = False
            try:
                self.teardown()
            except Exception as exc:  # whatever the SDK raises, say which step failed
                raise EnvError(f"{self.name}: could not delete the sandbox: {exc}") from exc
