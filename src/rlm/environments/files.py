"""What the host hands to a REPL process by file, written so a guest cannot redirect it.

The host writes only into directories the guest cannot write (an environment's control
directory), and even there never through what is in place: ``write_file`` creates a new
file (``O_EXCL | O_NOFOLLOW``) and renames it over the old name, so a link or a FIFO
planted there is replaced, never opened.  ``write_value`` hands a variable over this way
(never as a code literal, encoded by ``rlm.bridge.values``), ``ship_runner`` copies the
guest runtime, ``make_dir`` makes a directory with its owner and mode before any guest code
runs.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from rlm.bridge.values import EncodedValue, encode_value
from rlm.errors import EnvError

__all__ = ["RUNNER_FILES", "encode_variable", "free_uid", "make_dir", "ship_runner",
           "write_file", "write_value"]

#: The guest runtime: standard-library files shipped into every REPL process.
RUNNER_FILES = ("guest.py", "guards.py", "protocol.py", "schema.py", "validation.py",
                "values.py", "runner.py", "broker.py")
_SUFFIXES = {"text": ".txt", "bytes": ".bin", "json": ".json"}
#: (first, count): uids that no account, container range or systemd convention uses.
_FREE_UIDS = (0x70000000, 0x0FFE0000)


def free_uid() -> int:
    """A fresh unprivileged uid for one REPL (as root), from a range no account uses, so
    that ``RLIMIT_NPROC`` counts only that REPL's processes and nothing else is its own."""
    return _FREE_UIDS[0] + secrets.randbelow(_FREE_UIDS[1])


def write_file(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Write ``path`` whole (``data``: bytes, or pieces of them), never through what was
    there: a new file (``O_EXCL``, no link followed) renamed over the old name, so a link
    or FIFO in its place is replaced, not opened."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)  # the control directory (0750) decides who may read
    try:
        with os.fdopen(fd, "wb", closefd=True) as handle:
            for piece in [data] if isinstance(data, bytes) else data:
                handle.write(piece)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def ship_runner(directory: Path) -> Path:
    """Copy the guest runtime (``RUNNER_FILES``) into ``directory``, created; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in RUNNER_FILES:
        source = resources.files("rlm.bridge").joinpath(name)
        write_file(directory / name, source.read_bytes())
    return directory


def encode_variable(name: str, value: Any, *, owner: str,
                    to: str = "a separate process") -> EncodedValue:
    """``rlm.bridge.values.encode_value(value)``, or the ``EnvError`` naming the
    environment (``owner``) and where the value could not go (``to``)."""
    try:
        return encode_value(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise EnvError(f"{owner}: variable {name!r} of type {type(value).__name__} cannot be "
                       f"sent to {to} (use str, bytes, list, dict)") from exc


def write_value(directory: Path, name: str, value: Any, *, owner: str) -> tuple[Path, str]:
    """Hand a value over by a file in ``directory``, never as a code literal; return the
    file and its format (as ``runner.load_value`` reads it).  ``owner`` names the
    environment in the ``EnvError`` raised for a value JSON cannot hold."""
    encoded = encode_variable(name, value, owner=owner)
    path = directory / f"var-{name}{_SUFFIXES[encoded.format]}"
    try:  # in pieces: a 2 GB context is not copied whole again
        write_file(path, encoded.pieces())
    except OSError as exc:
        raise EnvError(f"{owner}: cannot hand variable {name!r} to the REPL: {exc}") from exc
    return path, encoded.format


def make_dir(path: Path, mode: int, owner: tuple[int, int] | None = None) -> Path:
    """Create ``path`` (it must not exist) with ``mode`` and, as root, ``owner``."""
    path.mkdir(mode=0o700)
    if owner is not None and os.geteuid() == 0:
        os.chown(path, *owner, follow_symlinks=False)
    os.chmod(path, mode, follow_symlinks=False)
    return path
