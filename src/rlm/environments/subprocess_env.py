"""The ``subprocess`` environment: a plain child process, as an unprivileged uid under root."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from rlm.environments.files import free_uid
from rlm.environments.layout import SAFE_ENV
from rlm.environments.process import ProcessEnvironment
from rlm.errors import EnvStartError

__all__ = ["SubprocessEnvironment"]


class SubprocessEnvironment(ProcessEnvironment):
    """A plain child Python process with rlimits and a wall-clock kill per block.

    Isolates: the host's memory and variables (API keys included: the child gets no host
    environment variable), a crash or ``os._exit`` of the REPL, runaway blocks.  When the
    host runs as root (and ``drop_privileges``, the default), the child runs through
    ``setpriv`` as a fresh unprivileged uid whose only capability is
    ``CAP_DAC_READ_SEARCH`` (so it can load this Python wherever it is installed): it cannot
    read or trace the host's memory (``/proc/<pid>/mem``, ``environ``, ptrace), signal host
    processes, write root's files or machine-wide control files (``/proc/sys``), or connect
    to root's Unix sockets, and ``max_processes`` holds.  Does NOT isolate: reading the file
    system (every file, as root), writing where any user may, the network, and, when the
    host does not run as root, the host itself: the child then has the host's uid and may
    read its memory through ``/proc`` or ptrace it.  Use ``sandbox`` or ``gvisor`` for
    untrusted code.
    """

    name = "subprocess"
    isolation = ("separate process, rlimits, wall-clock kill, an unprivileged uid as root; "
                 "shares files and network")

    def __init__(self, *, drop_privileges: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: The uid the child runs as when the host is root (``None``: the host's).
        self.uid = free_uid() if drop_privileges and os.geteuid() == 0 else None

    def guest_ids(self) -> tuple[int, int] | None:
        return None if self.uid is None else (self.uid, self.uid)

    def launch_command(self, runner: Path) -> list[str]:
        command = super().launch_command(runner)
        if self.uid is None:
            return command
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise EnvStartError("subprocess: setpriv is missing to drop root's privileges "
                                "(apt-get install util-linux, or drop_privileges=False)")
        keep = "-all,+dac_read_search"
        return [*self._as_uid(setpriv), f"--inh-caps={keep}", f"--ambient-caps={keep}",
                f"--bounding-set={keep}", "--no-new-privs", *command]

    def _as_uid(self, setpriv: str) -> list[str]:
        return [setpriv, f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups"]

    def process_killed(self) -> None:
        """Kill every process of the REPL's uid: a daemon that left the process group (a
        double fork, ``setsid``) goes too.  ``kill(-1)`` run as that uid reaches exactly
        them."""
        setpriv = shutil.which("setpriv")
        if self.uid is None or setpriv is None:
            return
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([*self._as_uid(setpriv), "--inh-caps=-all", "--bounding-set=-all",
                            "kill", "-9", "-1"], capture_output=True, timeout=30,
                           check=False, env=SAFE_ENV)

    def close(self) -> None:
        super().close()
        if self.uid is not None:
            _remove_owned_by(self.uid, ["/dev/shm", tempfile.gettempdir(), "/var/tmp"])


def _remove_owned_by(uid: int, folders: list[str]) -> None:
    """Remove the entries of ``folders`` that ``uid`` owns (what a REPL with a uid of its own
    left in the machine's shared temporary places), without following links."""
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                info = os.lstat(path)
                if info.st_uid != uid:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
