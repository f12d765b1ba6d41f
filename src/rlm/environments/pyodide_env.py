"""The "pyodide" environment: CPython compiled to WebAssembly (Pyodide), run by Deno.

The Deno process may only read two folders (the Pyodide runtime and its own control
directory, where the host puts the runner and the values it hands over) and has no
network, write, subprocess, FFI, system-information or environment permission.  Since it
cannot reach the host's ``LMServer``, LM requests travel on the control channel
(``ProcessEnvironment.lm_over_control``).  The guest is the shared
``rlm.bridge.runner`` / ``guest`` pair, run inside Pyodide by ``pyodide_runner.js``.

Pyodide itself comes from the npm registry (``npm install pyodide@PYODIDE_VERSION``, once,
into ``$RLM_PYODIDE_DIR`` or ``~/.cache/rlm/pyodide``); Deno from the ``deno`` wheel
(``pip install 'rlm[pyodide]'``).  A memory snapshot of an interpreter that has imported
the runner is made once next to it (again when the runner's files change); it cuts a start,
and a restart after a timeout, from about 6 s of CPU to under 1 s.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from rlm.environments.files import RUNNER_FILES, ship_runner
from rlm.environments.process import ProcessEnvironment
from rlm.errors import EnvStartError, MissingDependencyError

__all__ = ["PYODIDE_VERSION", "PyodideEnvironment", "ensure_runtime", "runtime_dir"]

PYODIDE_VERSION = "0.29.3"
_RUNNER = "pyodide_runner.js"
_INSTALL_TIMEOUT_S = 600.0
_SNAPSHOT_TIMEOUT_S = 300.0


def runtime_dir() -> Path:
    """Where Pyodide is installed: ``$RLM_PYODIDE_DIR`` or ``~/.cache/rlm/pyodide``."""
    override = os.environ.get("RLM_PYODIDE_DIR")
    if override:
        return Path(override).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rlm" / "pyodide"


def deno_binary() -> str:
    """The ``deno`` executable of the ``deno`` wheel, else one on ``PATH``."""
    try:
        from deno import find_deno_bin
    except ImportError:
        found = shutil.which("deno")
        if found is None:
            raise MissingDependencyError(
                "the environment 'pyodide' needs Deno: pip install 'rlm[pyodide]'") from None
        return found
    return str(find_deno_bin())


def _runner_script() -> Path:
    return Path(str(resources.files("rlm.environments").joinpath(_RUNNER)))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock between threads and processes preparing the same runtime."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _installed(root: Path) -> bool:
    return (root / "node_modules" / "pyodide" / "pyodide.asm.wasm").is_file()


def _npm(root: Path) -> str:
    """The ``npm`` that installs Pyodide into ``root``; ``EnvStartError`` when there is none."""
    npm = shutil.which("npm")
    if npm is None:
        raise EnvStartError(f"pyodide: npm is needed once to install pyodide@{PYODIDE_VERSION} "
                            f"into {root} (install Node.js and npm)")
    return npm


def _npm_install(root: Path) -> None:
    npm = _npm(root)
    staging = root.with_name(f"{root.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        subprocess.run([npm, "install", "--prefix", str(staging), "--no-audit", "--no-fund",
                        "--ignore-scripts", "--omit=dev", "--no-package-lock", "--loglevel=error",
                        f"pyodide@{PYODIDE_VERSION}"], check=True, capture_output=True,
                       timeout=_INSTALL_TIMEOUT_S)
        meta = json.loads((staging / "node_modules/pyodide/package.json").read_text())
        if meta.get("version") != PYODIDE_VERSION:
            raise EnvStartError(f"pyodide: npm installed {meta.get('version')}, "
                                f"not {PYODIDE_VERSION}")
        shutil.rmtree(root, ignore_errors=True)  # an install cut short
        staging.rename(root)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise EnvStartError(f"pyodide: cannot install pyodide@{PYODIDE_VERSION} with npm: "
                            f"{exc} {detail.decode(errors='replace')[-500:]}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _make_snapshot(deno: str, pyodide: Path, snapshot: Path) -> bool:
    """Run the runner in snapshot mode (it writes the snapshot to stdout: no write
    permission); keep it when it looks whole, dropping those over a day old."""
    with tempfile.TemporaryDirectory(prefix="rlm-pyodide-") as scratch:
        guest = ship_runner(Path(scratch))
        command = [deno, "run", *_deno_flags([pyodide, guest]), str(_runner_script()),
                   str(pyodide), "--make-snapshot", str(guest)]
        try:
            done = subprocess.run(command, capture_output=True, timeout=_SNAPSHOT_TIMEOUT_S,
                                  env=_deno_env(), check=True)
        except (OSError, subprocess.SubprocessError):
            return False
    if len(done.stdout) < 1 << 20:
        return False
    for old in snapshot.parent.glob("snapshot-*.bin"):  # of other versions of the runner
        if time.time() - old.stat().st_mtime > 86400:
            old.unlink(missing_ok=True)
    partial = snapshot.with_name(f"{snapshot.name}.partial-{os.getpid()}")
    partial.write_bytes(done.stdout)
    partial.replace(snapshot)
    return True


def ensure_runtime(deno: str) -> tuple[Path, Path | None]:
    """Install Pyodide (once) and snapshot it (once); return its folder and the snapshot
    (``None`` when one cannot be made: every start then loads Pyodide afresh)."""
    root = runtime_dir() / PYODIDE_VERSION
    with _locked(root.with_name(f".{PYODIDE_VERSION}.lock")):
        pyodide = root / "node_modules" / "pyodide"
        if not _installed(root):
            _npm_install(root)
        key = hashlib.sha256(_runner_script().read_bytes())
        for name in RUNNER_FILES:  # the snapshot holds them imported
            key.update(resources.files("rlm.bridge").joinpath(name).read_bytes())
        snapshot = root / f"snapshot-{key.hexdigest()[:16]}.bin"
        if snapshot.is_file() or _make_snapshot(deno, pyodide, snapshot):
            return pyodide, snapshot
        return pyodide, None


def _deno_flags(readable: list[Path]) -> list[str]:
    paths = [str(path) for path in readable]
    if any("," in path for path in paths):
        raise EnvStartError(f"pyodide: a path holds a comma, which --allow-read cannot take: "
                            f"{paths}")
    return ["--no-prompt", "--no-remote", "--no-npm", "--no-config", "--no-lock",
            "--unstable-detect-cjs", f"--allow-read={','.join(paths)}"]


def _deno_env() -> dict[str, str]:
    """Deno's own settings (the script cannot read them: no ``--allow-env``); Deno keeps
    its compiled-code cache in ``DENO_DIR``."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "NO_COLOR": "1",
            "DENO_NO_UPDATE_CHECK": "1", "DENO_DIR": str(runtime_dir() / "deno")}


class PyodideEnvironment(ProcessEnvironment):
    """CPython in WebAssembly (Pyodide) inside a Deno process with almost no permission.

    Isolates: the network (no ``--allow-net``: sockets fail, ``fetch`` never runs), the
    host's files (Deno reads only the Pyodide runtime and the control directory, writes
    nothing: Python's files live in memory), subprocesses and FFI, the host's environment
    variables (API keys included: the process gets none and may read none), the host's
    memory (a WebAssembly sandbox), runaway blocks (wall-clock kill and restart).  Does NOT
    limit memory or CPU time (the rlimit options are not applied: WebAssembly reserves large
    address ranges; Python's heap is bounded by wasm32's 4 GiB).  Only the standard library is
    importable.  Model code can reach Deno's API through Pyodide's ``js`` module, within those
    permissions; the worst it can do there is end or confuse its own REPL, which is restarted.
    """

    name = "pyodide"
    isolation = ("WebAssembly under Deno: no network, no host writes, no subprocess, no env; "
                 "reads only its runtime and the values handed over; wall-clock kill")
    lm_over_control = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._deno = ""
        self._pyodide: Path | None = None
        self._snapshot: Path | None = None

    @classmethod
    def probe(cls) -> None:
        """Deno, and Pyodide installed or npm to install it."""
        deno_binary()
        root = runtime_dir() / PYODIDE_VERSION
        if not _installed(root):
            _npm(root)

    def prepare(self) -> None:
        """Install Pyodide and snapshot it (once per machine) before the first process."""
        if self._pyodide is None:
            self._deno = deno_binary()
            self._pyodide, self._snapshot = ensure_runtime(self._deno)

    def launch_command(self, runner: Path) -> list[str]:
        assert self._pyodide is not None and self.control is not None
        return [self._deno, "run", *_deno_flags([self._pyodide.parent.parent, self.control]),
                str(_runner_script()), str(self._pyodide), str(runner.parent),
                str(self._snapshot or "")]

    def process_env(self) -> dict[str, str]:
        return _deno_env()
