"""The REPL in an E2B sandbox, reached at the sandbox's public host for the broker's port."""

from __future__ import annotations

import shlex
from typing import Any

from rlm.environments.remote import RemoteEnvironment, import_sdk

__all__ = ["E2BEnvironment"]


class E2BEnvironment(RemoteEnvironment):
    """An E2B sandbox (a Firecracker microVM in E2B's cloud) running the broker.

    Isolates: the host entirely (its files, processes, environment and API keys: LM calls
    are answered on the host); the broker's port is public at E2B's host name, and every
    request needs the bearer token.  Does NOT isolate: the sandbox's outbound network.
    Needs ``pip install 'rlm[e2b]'`` and ``E2B_API_KEY`` (or ``api_key``).

    ``template``: an E2B template with ``python3`` (default: E2B's base template);
    ``sandbox_timeout_s``: the sandbox's lifetime.
    """

    name = "e2b"
    isolation = "E2B sandbox (microVM); host files, processes and keys stay out"

    def __init__(self, *, template: str | None = None, sandbox_timeout_s: int = 3600,
                 api_key: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        self._e2b = import_sdk("e2b", "e2b")
        self.template = template
        self.sandbox_timeout_s = sandbox_timeout_s
        self._api_key = api_key
        self._sandbox: Any = None

    def provision(self) -> None:
        auth = {"api_key": self._api_key} if self._api_key else {}
        self._sandbox = self._e2b.Sandbox.create(template=self.template,
                                                 timeout=self.sandbox_timeout_s, **auth)

    def upload(self, files: dict[str, bytes]) -> None:
        for path, data in files.items():
            self._sandbox.files.write(path, data)  # creates the folders

    def launch(self, argv: list[str]) -> None:
        # timeout=0: a background command's connection is otherwise cut after 60 s.
        self._sandbox.commands.run(shlex.join(argv), background=True, timeout=0)

    def broker_url(self) -> str:
        host = self._sandbox.get_host(self.port)
        # E2B's debug mode (E2B_DEBUG) serves sandboxes on localhost without TLS.
        scheme = "http" if getattr(self._sandbox.connection_config, "debug", False) else "https"
        return f"{scheme}://{host}"

    def teardown(self) -> None:
        sandbox, self._sandbox = self._sandbox, None
        if sandbox is not None:
            sandbox.kill()
