"""What a REPL process gets of the host: its environment variables, its resource limits
(``ProcessLimits``), and the system paths and interpreter that the sandboxes (``sandbox``,
``gvisor``) bind read-only."""

from __future__ import annotations

import json
import os
import site
import sys
from dataclasses import dataclass

__all__ = ["SAFE_ENV", "SYSTEM_DIRS", "SYSTEM_FILES", "ProcessLimits", "python_layout"]

#: The whole environment a REPL process starts with (plus HOME and TMPDIR): no API key.
SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
#: Top-level system directories (symlinks into /usr, or directories).
SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: System files a dynamically linked interpreter reads.
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")


@dataclass(frozen=True)
class ProcessLimits:
    """The resource limits of a REPL process (``None``: no limit), which it applies to
    itself at start (``rlm.bridge.runner.apply_limits``, soft and hard); core dumps are off.

    ``memory_mb``: its address space; ``cpu_s``: its CPU time; ``max_processes``: the
    processes of its user (``RLIMIT_NPROC``); ``max_file_mb``: the size of a file it writes.
    """

    memory_mb: int | None = 4096
    cpu_s: int | None = None
    max_processes: int | None = 256
    max_file_mb: int | None = 1024

    def rlimits(self) -> dict[str, int | None]:
        """The limits as the runner reads them (bytes, seconds, a count)."""
        return {"memory_bytes": None if self.memory_mb is None else self.memory_mb << 20,
                "cpu_s": self.cpu_s, "processes": self.max_processes,
                "file_bytes": None if self.max_file_mb is None else self.max_file_mb << 20,
                "core_bytes": 0}

    def env(self, **overrides: int | None) -> str:
        """The value of ``RLM_LIMITS``: ``rlimits()`` as JSON, with ``overrides`` (by
        rlimit name: ``processes=None`` where a cgroup counts processes instead)."""
        return json.dumps({**self.rlimits(), **overrides})


def python_layout() -> tuple[str, list[str], list[tuple[str, str]]]:
    """This interpreter inside: (executable, read-only binds, (target, symlink) pairs)."""
    exe, real = os.path.abspath(sys.executable), os.path.realpath(sys.executable)
    binds, links = [os.path.realpath(sys.base_prefix)], []
    if sys.prefix != sys.base_prefix:  # a venv: its config and site-packages, not bin/
        binds.append(os.path.join(sys.prefix, "pyvenv.cfg"))
        binds += [path for path in site.getsitepackages()
                  if path.startswith(sys.prefix + os.sep) and os.path.isdir(path)]
        if exe != real:
            links.append((real, exe))
    else:
        exe = real
    if not any(real == path or real.startswith(path + os.sep) for path in [*binds, "/usr"]):
        binds.append(real)
    return exe, binds, links
