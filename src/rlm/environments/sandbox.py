"""The ``sandbox`` environment: the runner inside bubblewrap namespaces, without Docker.

The REPL process runs under ``bwrap`` (Debian package ``bubblewrap``) in new PID, network,
mount, IPC, UTS and cgroup namespaces, sees a read-only root made of ``/usr``, the Python
install and the venv's site-packages, and writes only to its scratch directory, mounted at
``/sandbox``.  What the host hands over (the runner, values, the LM socket, a token-checked
Unix socket) is in the environment's control directory, mounted read-only at ``/rlm``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import secrets
import shutil
import signal
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

from rlm.environments.files import free_uid, write_file
from rlm.environments.layout import SYSTEM_DIRS, SYSTEM_FILES, python_layout
from rlm.environments.process import ProcessEnvironment
from rlm.errors import EnvStartError

__all__ = ["GUEST_CONTROL", "GUEST_ROOT", "SandboxEnvironment"]

#: Where the scratch directory appears inside the sandbox (the REPL's cwd and home).
GUEST_ROOT = "/sandbox"
#: Where the control directory appears inside the sandbox, read-only.
GUEST_CONTROL = "/rlm"
_NAMESPACES = ("--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
               "--unshare-cgroup-try")
#: ``bwrap --die-with-parent`` kills the sandbox when the *thread* that started it ends
#: (PR_SET_PDEATHSIG), so sandboxes are started from these long-lived threads.
_SPAWNER = ThreadPoolExecutor(max_workers=16, thread_name_prefix="rlm-sandbox-spawn")


class SandboxEnvironment(ProcessEnvironment):
    """The runner process inside a bubblewrap sandbox.

    Isolates:
    - the network: its own namespace with only a loopback, so neither the host's 127.0.0.1
      listeners nor any other address; the LM handler is a token-checked Unix socket;
    - the file system: a read-only root with ``/usr``, the Python install and the venv's
      site-packages at their host paths and nothing else of the host (no home, project,
      ``/etc/shadow``, host ``/tmp``); the scratch directory, at ``/sandbox``, is the only
      writable place; what the host hands over is read-only at ``/rlm``;
    - host processes and variables: its own PID namespace (nothing of the host can be seen
      or signalled) and no host environment variable;
    - privileges and resources: as root, the REPL runs as an unprivileged ``uid`` with no
      capability (by default a fresh one per environment from a range no account uses, so
      ``RLIMIT_NPROC`` counts only its processes); the rlimits of ``ProcessEnvironment``,
      plus its own ``pids`` and ``memory`` cgroups (v1) where they can be made; a seccomp
      filter refuses new user namespaces; a wall-clock kill per block.

    Does NOT isolate: the rest of the kernel's system calls (no general seccomp allow-list),
    CPU shares, the disk space of the scratch directory's file system (only ``max_file_mb``
    per file), host-wide ``/proc`` files (``/proc/meminfo``, ``/proc/cpuinfo``...).
    Needs ``bwrap`` (Debian package ``bubblewrap``) and, as root, ``setpriv`` (util-linux).
    """

    name = "sandbox"
    isolation = ("bubblewrap: no network, own PID/mount namespaces, read-only root, only the "
                 "scratch dir writable, unprivileged uid, rlimits and cgroups, no user "
                 "namespaces, wall-clock kill")
    use_unix_socket = True
    guest_root = GUEST_ROOT
    guest_control = GUEST_CONTROL
    scratch_quota = True

    def __init__(self, *, uid: int | None = None, cgroups: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.uid = free_uid() if uid is None else uid
        self.use_cgroups = cgroups
        #: The cgroup directories made for this sandbox (removed by ``close``).
        self.cgroups: list[Path] | None = None

    @classmethod
    def probe(cls) -> None:
        """A ``bwrap`` that can make the namespaces here (and, as root, ``setpriv``)."""
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise EnvStartError("sandbox: bubblewrap is not installed (apt-get install "
                                "bubblewrap)")
        if os.geteuid() == 0 and shutil.which("setpriv") is None:
            raise EnvStartError("sandbox: setpriv is missing (apt-get install util-linux)")
        user = [] if os.geteuid() == 0 else ["--unshare-user"]
        check = subprocess.run([bwrap, *user, *_NAMESPACES, "--ro-bind", "/", "/", "true"],
                               capture_output=True, text=True, timeout=30, check=False)
        if check.returncode != 0:
            raise EnvStartError(f"sandbox: bwrap cannot create namespaces here: "
                                f"{check.stderr.strip() or check.returncode}")

    # -- hooks -----------------------------------------------------------------------------
    def guest_ids(self) -> tuple[int, int] | None:
        return (self.uid, self.uid)

    def launch_command(self, runner: Path) -> list[str]:
        """``bwrap`` (inside the cgroups), then ``setpriv`` to ``uid`` when run as root."""
        python, binds, links = python_layout()
        command = [shutil.which("bwrap") or "bwrap", *_NAMESPACES, "--die-with-parent",
                   "--new-session", "--hostname", "sandbox", "--proc", "/proc", "--dev", "/dev",
                   "--ro-bind", "/usr", "/usr"]
        if os.geteuid() == 0:
            command += ["--cap-drop", "ALL"]  # but what setpriv needs to drop the rest
            for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"):
                command += ["--cap-add", cap]
        else:  # bwrap then needs a user namespace: the caller's own uid, no capability
            command += ["--unshare-user", "--disable-userns"]
        for top in SYSTEM_DIRS:
            if os.path.islink(top):
                command += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                command += ["--ro-bind", top, top]
        shown = [*SYSTEM_FILES, *binds, *(d for _, d in links)]
        for parent in _parents(shown, ["/usr", *SYSTEM_DIRS]):
            command += ["--perms", "0711", "--dir", parent]  # passable, not listable
        for path in SYSTEM_FILES:
            command += ["--ro-bind-try", path, path]
        for path in binds:
            command += ["--ro-bind", path, path]
        for target, dest in links:
            command += ["--symlink", target, dest]
        assert self.scratch is not None and self.control is not None
        command += ["--bind", str(self.scratch), GUEST_ROOT,
                    "--ro-bind", str(self.control), GUEST_CONTROL, "--chdir", GUEST_ROOT,
                    "--remount-ro", "/", "--seccomp", "3"]
        if os.geteuid() == 0:
            command += [shutil.which("setpriv") or "/usr/bin/setpriv", f"--reuid={self.uid}",
                        f"--regid={self.uid}", "--clear-groups", "--inh-caps=-all",
                        "--bounding-set=-all", "--no-new-privs"]
        # -E -s, not -I: the runner imports guest.py from its own (read-only) directory.
        command += [python, "-E", "-s", "-B", "-u", self.guest_path(runner)]
        # A shell joins the cgroups before bwrap forks (so every process is counted) and
        # opens the seccomp program on fd 3.
        procs = [str(path / "cgroup.procs") for path in self.cgroups or []]
        script = ('f=$1; n=$2; shift 2; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 1; '
                  'shift; n=$((n - 1)); done; exec "$@" 3< "$f"')
        filter_file = str(self.control / "seccomp.bpf")
        return ["/bin/sh", "-c", script, "sh", filter_file, str(len(procs)), *procs, *command]

    # -- lifecycle ---------------------------------------------------------------------------
    def _spawn(self) -> None:
        _SPAWNER.submit(super()._spawn).result()

    def prepare(self) -> None:
        """Write the seccomp program into the control directory and make the cgroups."""
        assert self.control is not None
        write_file(self.control / "seccomp.bpf", _seccomp_program())
        if self.cgroups is None:
            self.cgroups = _make_cgroups(self.limits.rlimits()) if self.use_cgroups else []

    def close(self) -> None:
        try:
            super().close()
        finally:
            for path in self.cgroups or []:
                _remove_cgroup(path)
            self.cgroups = []


def _seccomp_program() -> bytes:
    """A classic-BPF seccomp program that refuses new user namespaces: ``unshare`` and
    ``clone`` with ``CLONE_NEWUSER`` fail with EPERM; ``clone3`` (whose flags it cannot
    read) and foreign-ABI calls fail with ENOSYS (libc then falls back to ``clone``)."""
    arch = {"x86_64": (0xC000003E, 272, 56), "aarch64": (0xC00000B7, 97, 220)}
    audit, unshare, clone = arch.get(platform.machine(), (0, -1, -1))
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, fail = 0x7FFF0000, 0x00050000  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | errno
    program = [
        (ld, 0, 0, 4),  # 0: seccomp_data.arch
        (jeq, 0, 10, audit),  # 1: another ABI -> 12
        (ld, 0, 0, 0),  # 2: seccomp_data.nr
        (jge, 8, 0, 0x40000000),  # 3: the x32 ABI -> 12
        (jeq, 7, 0, 435),  # 4: clone3 -> 12
        (jeq, 2, 0, unshare),  # 5: -> 8
        (jeq, 1, 0, clone),  # 6: -> 8
        (ret, 0, 0, allow),  # 7
        (ld, 0, 0, 16),  # 8: the low half of args[0] (the flags)
        (jset, 0, 1, 0x10000000),  # 9: CLONE_NEWUSER -> 10, else 11
        (ret, 0, 0, fail | errno.EPERM),  # 10
        (ret, 0, 0, allow),  # 11
        (ret, 0, 0, fail | errno.ENOSYS),  # 12
    ]
    if audit == 0:  # an architecture this table does not know: allow everything
        program = [(ret, 0, 0, allow)]
    return b"".join(struct.pack("=HBBI", *op) for op in program)


def _parents(paths: list[str], mounted: list[str]) -> list[str]:
    """The directories bwrap must create above ``paths``, parents first."""
    covered = [*mounted, *paths]
    found: set[str] = set()
    for path in paths:
        for parent in PurePosixPath(path).parents:
            text = str(parent)
            if text != "/" and not any(text == c or text.startswith(c + "/") for c in covered):
                found.add(text)
    return sorted(found, key=lambda p: (p.count("/"), p))


def _make_cgroups(limits: dict[str, int | None]) -> list[Path]:
    """Child cgroups (v1) of this process's own ``pids`` and ``memory`` cgroups, with the
    process and memory limits; those that cannot be made here are left out."""
    wanted = {"pids": ("pids.max", limits.get("processes")),
              "memory": ("memory.limit_in_bytes", limits.get("memory_bytes"))}
    if os.geteuid() != 0:
        return []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    name = f"rlm-sandbox-{secrets.token_hex(6)}"
    made: list[Path] = []
    for line in lines:
        _, controllers, own = line.split(":", 2)
        for controller in controllers.split(","):
            knob, value = wanted.get(controller, ("", None))
            if value is None:
                continue
            path = Path("/sys/fs/cgroup", controller, own.lstrip("/"), name)
            try:
                path.mkdir()
            except OSError:
                continue
            try:
                (path / knob).write_text(str(value))
            except OSError:
                _remove_cgroup(path)
                continue
            made.append(path)
    return made


def _remove_cgroup(path: Path) -> None:
    """Kill what is left in ``path`` and remove it (a process may take a moment to go)."""
    for _ in range(100):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            with contextlib.suppress(OSError):
                for pid in (path / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.05)
