"""The ``gvisor`` environment: the runner in a gVisor sandbox (``runsc``), no Docker needed.

gVisor runs the code on a user-space kernel (the Sentry), so model code never makes a
system call to the host's kernel.  The environment writes an OCI bundle (``config.json``
and an empty root that the mounts fill) and starts it with ``runsc run``; LM requests
travel on the control channel (stdin/stdout), so the sandbox needs no socket at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

from rlm.environments.layout import SYSTEM_DIRS, SYSTEM_FILES, python_layout
from rlm.environments.process import ProcessEnvironment
from rlm.environments.sandbox import GUEST_CONTROL, GUEST_ROOT
from rlm.errors import EnvStartError

__all__ = ["GVisorEnvironment"]

_NOBODY = 65534


class GVisorEnvironment(ProcessEnvironment):
    """The runner process inside gVisor (``runsc``, Debian package ``runsc``).

    Isolates:
    - the host kernel: every system call of the code is served by gVisor's own kernel in
      user space (``platform``: ``ptrace`` works everywhere, ``systrap``/``kvm`` are faster
      where the installed runsc has them);
    - the network: none (``--network=none``); LM calls go over the control channel;
    - the file system: a read-only root made of ``/usr``, the Python install and the venv's
      site-packages; the scratch directory, at ``/sandbox``, is the only writable place;
      what the host hands over (runner, values) is read-only at ``/rlm``;
    - host processes and variables: its own PID namespace, no host environment variable;
    - privileges: uid 65534 with no capability and ``no_new_privs``; the rlimits of
      ``ProcessEnvironment`` (applied inside gVisor); a wall-clock kill per block.

    Does NOT isolate: CPU time and memory at the host's level (the Sentry is one host
    process; ``memory_mb`` bounds each guest process's address space), disk space of the
    scratch directory's file system (only ``max_file_mb`` per file).  ``/tmp`` is a
    ``tmpfs_mb`` tmpfs.
    """

    name = "gvisor"
    isolation = ("gVisor user-space kernel: no network, own PID namespace, read-only root, only "
                 "the scratch dir writable, uid 65534 without capabilities, rlimits, "
                 "wall-clock kill")
    lm_over_control = True
    guest_root = GUEST_ROOT
    guest_control = GUEST_CONTROL
    scratch_quota = True

    def __init__(self, *, platform: str = "ptrace", runsc_args: tuple[str, ...] | list[str] = (),
                 tmpfs_mb: int = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.platform = platform
        self.tmpfs_mb = tmpfs_mb
        self.runsc_args = list(runsc_args)
        self.container: str | None = None
        self._state: Path | None = None  # runsc's --root: its container state, private

    @classmethod
    def probe(cls) -> None:
        """A ``runsc`` that can start a sandbox here (as root)."""
        runsc = _runsc()
        if runsc is None:
            raise EnvStartError("gvisor: runsc is not installed (apt-get install runsc)")
        if os.geteuid() != 0:
            raise EnvStartError("gvisor: runsc needs root here (rootless runsc cannot run a "
                                "bundle with its own mounts)")
        with tempfile.TemporaryDirectory(prefix="rlm-runsc-probe-") as state:
            check = subprocess.run(
                [runsc, "--root", state, "--network=none", "--platform=ptrace", "do", "true"],
                capture_output=True, text=True, timeout=60, check=False)
        if check.returncode != 0:
            raise EnvStartError(f"gvisor: runsc cannot start a sandbox here: "
                                f"{check.stderr.strip()[-500:] or check.returncode}")

    # -- hooks of ProcessEnvironment -----------------------------------------------------------
    def process_env(self) -> dict[str, str]:
        """The environment of ``runsc`` on the host (the guest's is in ``config.json``)."""
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

    def guest_ids(self) -> tuple[int, int] | None:
        return (_NOBODY, _NOBODY)

    def launch_command(self, runner: Path) -> list[str]:
        assert self.scratch is not None and self.control is not None
        if self._state is None:
            self._state = Path(tempfile.mkdtemp(prefix="rlm-runsc-"))
        self.container = f"rlm-{uuid.uuid4().hex[:12]}"
        bundle = self._state / self.container
        python, binds, links = python_layout()
        argv = [python, "-E", "-s", "-B", "-u", self.guest_path(runner)]
        _write_bundle(bundle, argv, super().process_env(), binds, links, self.scratch,
                      self.control, self.tmpfs_mb)
        return [_runsc() or "runsc", "--root", str(self._state), "--network=none",
                f"--platform={self.platform}", *self.runsc_args,
                "run", "--bundle", str(bundle), self.container]

    def process_killed(self) -> None:
        """``runsc`` keeps the sandbox's processes outside the killed process group: delete
        the container too."""
        container, self.container = self.container, None
        if container is None or self._state is None:
            return
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([_runsc() or "runsc", "--root", str(self._state), "delete",
                            "--force", container], capture_output=True, timeout=30, check=False)
        shutil.rmtree(self._state / container, ignore_errors=True)

    def close(self) -> None:
        try:
            super().close()
        finally:
            try:
                self.process_killed()
            finally:
                if self._state is not None:
                    shutil.rmtree(self._state, ignore_errors=True)
                    self._state = None


def _runsc() -> str | None:
    """The ``runsc`` executable: on ``PATH``, else where Debian or its installer puts it
    (``/usr/sbin`` is not on every ``PATH``)."""
    return shutil.which("runsc") or next(
        (p for p in ("/usr/bin/runsc", "/usr/sbin/runsc", "/usr/local/bin/runsc")
         if os.access(p, os.X_OK)), None)


def _write_bundle(bundle: Path, argv: list[str], env: dict[str, str], binds: list[str],
                  links: list[tuple[str, str]], scratch: Path, control: Path,
                  tmpfs_mb: int) -> None:
    """An OCI bundle: an empty root (mount points and symlinks only) and ``config.json``.

    Everything the guest needs is a mount, applied in order: the venv's interpreter too
    (bound onto its path), so that a venv under ``/tmp`` shows through the ``/tmp`` tmpfs.
    """
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True)

    def inside(path: str) -> Path:
        return rootfs / path.lstrip("/")

    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]},
        # gVisor would give /tmp an unbounded tmpfs (the Sentry's memory): bound it.
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777", f"size={tmpfs_mb}m"]},
    ]
    for top in SYSTEM_DIRS:
        if os.path.islink(top):
            inside(top).symlink_to(os.readlink(top))
        elif os.path.isdir(top):
            mounts.append({"destination": top, "type": "bind", "source": top,
                           "options": ["rbind", "ro"]})
    for path in [*binds, *(p for p in SYSTEM_FILES if os.path.exists(p))]:
        mounts.append({"destination": path, "type": "bind", "source": path,
                       "options": ["rbind", "ro"]})
    for target, dest in links:  # a bind, not a symlink in the root: /tmp is a tmpfs above it
        mounts.append({"destination": dest, "type": "bind", "source": os.path.realpath(target),
                       "options": ["rbind", "ro"]})
    mounts.append({"destination": GUEST_ROOT, "type": "bind", "source": str(scratch),
                   "options": ["rbind", "rw"]})
    mounts.append({"destination": GUEST_CONTROL, "type": "bind", "source": str(control),
                   "options": ["rbind", "ro"]})
    for mount in mounts:  # mount points must exist in the (read-only) root
        point = inside(mount["destination"])
        if os.path.isfile(mount["source"]):
            point.parent.mkdir(parents=True, exist_ok=True)
            point.touch()
        else:
            point.mkdir(parents=True, exist_ok=True)
    destinations = {inside(mount["destination"]) for mount in mounts}
    for folder, _dirs, _files in os.walk(rootfs):
        if Path(folder) not in destinations and Path(folder) != rootfs:
            os.chmod(folder, 0o711)  # passable on the way to a mount, not listable
    config = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": _NOBODY if os.geteuid() == 0 else os.getuid(),
                     "gid": _NOBODY if os.geteuid() == 0 else os.getgid()},
            "args": argv,
            "env": [f"{key}={value}" for key, value in env.items()],
            "cwd": GUEST_ROOT,
            "capabilities": {kind: [] for kind in
                             ("bounding", "effective", "inheritable", "permitted", "ambient")},
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "gvisor",
        "mounts": mounts,
        "linux": {"namespaces": [{"type": kind} for kind in
                                 ("pid", "network", "ipc", "uts", "mount")]},
    }
    (bundle / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
