"""The REPL in a Daytona sandbox, reached through the preview link of the broker's port."""

from __future__ import annotations

import shlex
from typing import Any

from rlm.environments.remote import RemoteEnvironment, import_sdk

__all__ = ["DaytonaEnvironment"]


class DaytonaEnvironment(RemoteEnvironment):
    """A Daytona sandbox (a container in Daytona's cloud) running the broker.

    Isolates: the host entirely (its files, processes, environment and API keys: LM calls
    are answered on the host); the broker is reached through Daytona's preview proxy, which
    wants its own preview token, and the broker wants the bearer token besides.  Does NOT
    isolate: the sandbox's outbound network.  Needs ``pip install 'rlm[daytona]'`` and
    ``DAYTONA_API_KEY`` (or ``api_key``).

    ``image``: an image with ``python3`` (default: Daytona's Python snapshot).
    """

    name = "daytona"
    isolation = "Daytona sandbox (container); host files, processes and keys stay out"
    _session = "rlm-broker"

    def __init__(self, *, image: str | None = None, api_key: str | None = None,
                 target: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        self._daytona = import_sdk("daytona", "daytona")
        self.image = image
        self._api_key = api_key
        self.target = target
        self._daytona_client: Any = None
        self._sandbox: Any = None
        self._preview_token: str | None = None

    def provision(self) -> None:
        sdk = self._daytona
        settings = {k: v for k, v in (("api_key", self._api_key), ("target", self.target)) if v}
        self._daytona_client = (sdk.Daytona(sdk.DaytonaConfig(**settings)) if settings
                               else sdk.Daytona())
        params = sdk.CreateSandboxFromImageParams(image=self.image) if self.image else None
        self._sandbox = self._daytona_client.create(params, timeout=self.start_timeout_s)

    def upload(self, files: dict[str, bytes]) -> None:
        self._sandbox.fs.create_folder(self.remote_dir, "700")
        for path, data in files.items():
            self._sandbox.fs.upload_file(data, path)

    def launch(self, argv: list[str]) -> None:
        process = self._sandbox.process
        process.create_session(self._session)
        process.execute_session_command(self._session, self._daytona.SessionExecuteRequest(
            command=shlex.join(argv), run_async=True))

    def broker_url(self) -> str:
        link = self._sandbox.get_preview_link(self.port)
        self._preview_token = link.token
        return str(link.url)

    def request_headers(self) -> dict[str, str]:
        # The proxy reads Authorization itself, so the broker's token goes in its own header.
        headers = {"X-RLM-Token": self._token}
        if self._preview_token:
            headers["X-Daytona-Preview-Token"] = self._preview_token
        return headers

    def teardown(self) -> None:
        sandbox, self._sandbox = self._sandbox, None
        if sandbox is not None:
            self._daytona_client.delete(sandbox)
