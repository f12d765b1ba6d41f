"""What a REPL process sees of the host: its environment variables, and the system paths and
interpreter that the sandboxes (``sandbox``, ``gvisor``) bind read-only."""

from __future__ import annotations

import os
import site
import sys

__all__ = ["SAFE_ENV", "SYSTEM_DIRS", "SYSTEM_FILES", "python_layout"]

#: The whole environment a REPL process starts with (plus HOME and TMPDIR): no API key.
SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
#: Top-level system directories (symlinks into /usr, or directories).
SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: System files a dynamically linked interpreter reads.
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")


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
