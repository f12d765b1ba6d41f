"""The REPL in a Modal Sandbox, reached through an encrypted tunnel to its HTTP broker."""

from __future__ import annotations

from typing import Any

from rlm.environments.remote import RemoteEnvironment, import_sdk

__all__ = ["ModalEnvironment"]


class ModalEnvironment(RemoteEnvironment):
    """A Modal Sandbox (a gVisor container in Modal's cloud) running the broker.

    Isolates: the host entirely (its files, processes, environment and API keys: LM calls
    are answered on the host); the broker is reached only through Modal's TLS tunnel with a
    bearer token.  Does NOT isolate: the sandbox's outbound network unless
    ``block_network=True`` (Modal's setting; whether tunnels keep working with it is Modal's
    to say).  Needs ``pip install 'rlm[modal]'`` and a Modal token (``modal setup``).

    ``image``: a ``modal.Image`` with ``python3`` (default: Debian slim with
    ``python_version``); ``sandbox_timeout_s``: the sandbox's lifetime.
    """

    name = "modal"
    isolation = "Modal sandbox (gVisor container); host files, processes and keys stay out"

    def __init__(self, *, app_name: str = "rlm", image: Any = None, python_version: str = "3.11",
                 sandbox_timeout_s: int = 3600, cpu: float | None = None,
                 memory_mb: int | None = None, block_network: bool = False,
                 **options: Any) -> None:
        super().__init__(**options)
        self._modal = import_sdk("modal", "modal")
        self.app_name = app_name
        self.image = image
        self.python_version = python_version
        self.sandbox_timeout_s = sandbox_timeout_s
        self.cpu = cpu
        self.memory_mb = memory_mb
        self.block_network = block_network
        self._sandbox: Any = None

    def provision(self) -> None:
        modal = self._modal
        app = modal.App.lookup(self.app_name, create_if_missing=True)
        image = self.image or modal.Image.debian_slim(python_version=self.python_version)
        self._sandbox = modal.Sandbox.create(
            app=app, image=image, timeout=self.sandbox_timeout_s, cpu=self.cpu,
            memory=self.memory_mb, block_network=self.block_network,
            encrypted_ports=[self.port],
        )

    def upload(self, files: dict[str, bytes]) -> None:
        for path, data in files.items():
            self._sandbox.filesystem.write_bytes(data, path)  # creates the folders

    def launch(self, argv: list[str]) -> None:
        devnull = import_sdk("modal.stream_type", "modal").StreamType.DEVNULL
        self._sandbox.exec(*argv, stdout=devnull, stderr=devnull)

    def broker_url(self) -> str:
        return str(self._sandbox.tunnels()[self.port].url)

    def teardown(self) -> None:
        sandbox, self._sandbox = self._sandbox, None
        if sandbox is not None:
            sandbox.terminate()
