"""The REPL in a Prime Intellect sandbox, reached through an exposed HTTP port."""

from __future__ import annotations

import posixpath
import secrets
import shlex
from typing import Any

from rlm.environments.remote import RemoteEnvironment, import_sdk

__all__ = ["PrimeEnvironment"]


class PrimeEnvironment(RemoteEnvironment):
    """A Prime Intellect sandbox running the broker.

    Isolates: the host entirely (its files, processes, environment and API keys: LM calls
    are answered on the host); the broker's port is exposed over HTTPS and every request
    needs the bearer token.  Does NOT isolate: the sandbox's outbound network.  Needs
    ``pip install 'rlm[prime]'`` and ``PRIME_API_KEY`` (or ``api_key``).

    The port is exposed with the platform's ``POST /sandbox/{id}/expose`` endpoint through
    the SDK's own API client: the SDK had an ``expose()`` for it until 0.2.x and has none
    since, so this call is the least certain part of this adapter.
    """

    name = "prime"
    isolation = "Prime Intellect sandbox; host files, processes and keys stay out"

    def __init__(self, *, docker_image: str = "python:3.11-slim", cpu_cores: float = 1.0,
                 memory_gb: float = 2.0, timeout_minutes: int = 60, api_key: str | None = None,
                 **options: Any) -> None:
        super().__init__(**options)
        self._prime = import_sdk("prime_sandboxes", "prime")
        self.docker_image = docker_image
        self.cpu_cores = cpu_cores
        self.memory_gb = memory_gb
        self.timeout_minutes = timeout_minutes
        self._api_key = api_key
        self._api: Any = None
        self._sandboxes: Any = None
        self._id: str | None = None

    def provision(self) -> None:
        sdk = self._prime
        self._api = sdk.APIClient(api_key=self._api_key) if self._api_key else sdk.APIClient()
        self._sandboxes = sdk.SandboxClient(self._api)
        sandbox = self._sandboxes.create(sdk.CreateSandboxRequest(
            name=f"rlm-{secrets.token_hex(4)}", docker_image=self.docker_image,
            cpu_cores=self.cpu_cores, memory_gb=self.memory_gb,
            timeout_minutes=self.timeout_minutes))
        self._id = sandbox.id
        self._sandboxes.wait_for_creation(sandbox.id)

    def upload(self, files: dict[str, bytes]) -> None:
        self._sandboxes.execute_command(self._id, f"mkdir -p {shlex.quote(self.remote_dir)}")
        for path, data in files.items():
            self._sandboxes.upload_bytes(self._id, path, data, posixpath.basename(path))

    def launch(self, argv: list[str]) -> None:
        self._sandboxes.start_background_job(self._id, shlex.join(argv))

    def broker_url(self) -> str:
        exposed = self._api.request("POST", f"/sandbox/{self._id}/expose",
                                    json={"port": self.port, "name": "rlm-broker",
                                          "protocol": "HTTP"})
        return str(exposed["url"])

    def teardown(self) -> None:
        sandbox_id, self._id = self._id, None
        if sandbox_id is not None:
            self._sandboxes.delete(sandbox_id)
