"""The ``remote-local`` environment: the cloud broker as a local process on 127.0.0.1.

It runs the same code path as the cloud adapters (``RemoteEnvironment`` and the broker,
reached only over HTTP) without a cloud, so the remote machinery is tested for real.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from rlm.environments.layout import SAFE_ENV
from rlm.environments.remote import RemoteEnvironment
from rlm.errors import EnvStartError

__all__ = ["LocalRemoteEnvironment"]


class LocalRemoteEnvironment(RemoteEnvironment):
    """The broker as a local process on 127.0.0.1, reached only over HTTP: the cloud code path.

    Isolates: the host's memory and variables (the process gets no host environment
    variable, so no API key), a crash of the REPL.  Does NOT isolate: the file system, the
    network, other processes of the same user.  It exists to test ``RemoteEnvironment``
    and the broker without a cloud; the process ends when the host does (its stdin closes).
    """

    name = "remote-local"
    isolation = "separate process reached over HTTP on 127.0.0.1; shares files and network"
    bind_host = "127.0.0.1"

    def __init__(self, **options: Any) -> None:
        options.setdefault("port", 0)
        super().__init__(**options)
        self.python = sys.executable
        self.scratch: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def provision(self) -> None:
        self.scratch = Path(tempfile.mkdtemp(prefix="rlm-remote-"))
        (self.scratch / "tmp").mkdir()
        self.remote_dir = str(self.scratch / ".rlm")

    def upload(self, files: dict[str, bytes]) -> None:
        for path, data in files.items():
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(0o600)

    def launch_broker_command(self) -> list[str]:
        python, *rest = super().launch_broker_command()
        return [python, "-I", "-u", *rest, "--exit-on-stdin-eof",
                "--remove-on-exit", str(self.scratch)]

    def launch(self, argv: list[str]) -> None:
        assert self.scratch is not None
        env = {**SAFE_ENV, "HOME": str(self.scratch), "TMPDIR": str(self.scratch / "tmp")}
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, cwd=self.scratch, env=env,
                                      start_new_session=True)

    def broker_url(self) -> str:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], self.start_timeout_s)
        line = proc.stdout.readline() if ready else b""
        proc.stdout.close()
        if not line:
            raise EnvStartError(f"{self.name}: the broker did not start (exit code "
                                f"{proc.poll()})")
        return f"http://127.0.0.1:{json.loads(line)['port']}"

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs."""
        return None if self._proc is None else self._proc.pid

    def teardown(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2.0)  # after /shutdown it exits by itself
            # Whatever it exited or not, end its whole group (processes model code started).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10.0)
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
