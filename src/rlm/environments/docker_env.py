"""REPLs in a Docker container: the shared runner behind ``docker run``, one container each.

``DockerEnvironment`` is a ``ProcessEnvironment`` whose process is a ``docker run -i``
client: the control channel is the container's stdin/stdout, LM requests go to the
environment's ``LMServer`` on a Unix socket in its control directory.  The container sees
two host paths: the scratch directory (at ``/work``) and the control directory (runner,
values, socket; read-only at ``/rlm``).

The default image is built locally, never pulled: ``build_image`` streams the host's own
Python interpreter (its standard library, without site-packages) and the shared libraries
it needs into ``docker import``; ``python -m rlm.environments.docker_env`` builds it if
missing and prints its tag.  Any other image with a ``python`` works (``image=``,
``python=``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from rlm.environments.process import ProcessEnvironment
from rlm.errors import EnvStartError

__all__ = ["DockerEnvironment", "build_image", "default_image", "engine_error"]

#: Every container gets ``LABEL=docker`` and ``rlm.instance=<its environment's id>``.
LABEL = "rlm.environment"
_BUILD = "3"  # bump when the image's layout changes
_SKIP = {"site-packages", "dist-packages", "test", "tests", "idlelib", "tkinter", "turtledemo",
         "ensurepip", "__phello__"}
_NOBODY = 65534
_CLIENT_ENV = ("PATH", "HOME", "XDG_RUNTIME_DIR")
_PRESENT: set[str] = set()  # images known to exist


def _docker(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker")
    if exe is None:
        raise FileNotFoundError("the docker command is not installed")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout,
                          check=False, stdin=subprocess.DEVNULL)


def engine_error() -> str | None:
    """Why no Docker engine answers here (``None``: one does); ``DockerEnvironment`` asks
    once per process (its ``probe``)."""
    try:
        done = _docker("info", "--format", "{{.ServerVersion}}", timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no Docker engine: {exc}"
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["`docker info` failed"]
        return f"no Docker engine: {lines[-1]}"
    return None


def _interpreter() -> tuple[Path, Path]:
    """The base (not virtualenv) interpreter running this code and its standard library."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    exe = Path(sys.base_prefix) / "bin" / f"python{version}"
    if not exe.exists():
        exe = Path(getattr(sys, "_base_executable", sys.executable))
    return exe.resolve(), Path(sysconfig.get_paths()["stdlib"])


def default_image() -> str:
    """The tag of the image ``build_image`` makes from this host's Python."""
    exe, stdlib = _interpreter()
    digest = hashlib.sha256(f"{_BUILD}|{exe}|{stdlib}|{sys.version}".encode()).hexdigest()
    return f"rlm-python:{sys.version_info.major}.{sys.version_info.minor}-{digest[:12]}"


def _shared_libraries(binaries: list[Path]) -> tuple[set[Path], set[Path]]:
    """The shared libraries that ``binaries`` need, and their loaders, as ``ldd`` names them."""
    done = subprocess.run(["ldd", *map(str, binaries)], capture_output=True, text=True,
                          check=False)
    libraries = re.findall(r"=>\s*(/\S+)\s+\(0x", done.stdout)
    loaders = re.findall(r"^\s+(/\S+)\s+\(0x", done.stdout, flags=re.MULTILINE)
    return {Path(p) for p in libraries}, {Path(p) for p in loaders}


def _add(tar: tarfile.TarFile, name: str, *, data: bytes | None = None,
         source: Path | None = None, mode: int = 0o755, kind: bytes = tarfile.REGTYPE,
         link: str = "") -> None:
    info = tarfile.TarInfo(name.lstrip("/"))
    info.type, info.mode, info.linkname = kind, mode, link
    if source is not None:
        data = source.read_bytes()
        info.mode = source.stat().st_mode & 0o755
    info.size = len(data) if data is not None and kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if info.size else None)


def _image_files() -> dict[str, Path]:
    """Image path -> host file: this host's interpreter and standard library moved under
    /usr/local (Python finds its library next to its executable), the shared libraries they
    and /bin/sh need in /usr/local/lib, their loader where it is."""
    exe, stdlib = _interpreter()
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    files = {f"/usr/local/bin/{version}": exe, "/bin/sh": Path("/bin/sh").resolve()}
    for root, dirs, names in os.walk(stdlib):
        dirs[:] = [d for d in dirs if d not in _SKIP and not d.startswith("config-")]
        for name in names:
            path = Path(root) / name
            if path.is_file():
                files[f"/usr/local/lib/{version}/{path.relative_to(stdlib)}"] = path.resolve()
    libraries, loaders = _shared_libraries([p for p in files.values()
                                            if p.suffix == ".so" or os.access(p, os.X_OK)])
    files.update({f"/usr/local/lib/{lib.name}": lib.resolve() for lib in libraries})
    files.update({str(loader): loader.resolve() for loader in loaders})
    return files


def build_image(tag: str | None = None) -> str:
    """Build the default image from this host's Python (a few seconds, no download)."""
    tag = tag or default_image()
    files = _image_files()
    wanted = [*files, "/tmp/_", "/work/_", "/rlm/_", "/etc/_"]
    dirs = {str(parent) for name in wanted for parent in Path(name).parents} - {"/"}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    command = [shutil.which("docker") or "docker", "import", "--change",
               "ENV LD_LIBRARY_PATH=/usr/local/lib", "--change", f"LABEL {LABEL}=image", "-",
               tag]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE) as proc:
        assert proc.stdin is not None and proc.stderr is not None
        # A broken pipe means docker import failed: its error is reported below.
        with contextlib.suppress(BrokenPipeError), proc.stdin, \
                tarfile.open(fileobj=proc.stdin, mode="w|") as tar:
            for directory in sorted(dirs):
                _add(tar, directory, kind=tarfile.DIRTYPE,
                     mode=0o1777 if directory == "/tmp" else 0o755)
            for name, source in sorted(files.items()):
                _add(tar, name, source=source)
            _add(tar, "/etc/passwd", mode=0o644, data=b"root:x:0:0::/root:/bin/sh\n"
                 b"nobody:x:65534:65534:nobody:/work:/bin/sh\n")
            _add(tar, "/etc/group", mode=0o644, data=b"root:x:0:\nnogroup:x:65534:\n")
            for alias in ("python3", "python"):
                _add(tar, f"/usr/local/bin/{alias}", kind=tarfile.SYMTYPE, link=version)
        error = proc.stderr.read().decode(errors="replace").strip()
    if proc.returncode != 0:
        raise EnvStartError(f"docker: cannot build the image {tag}: {error}")
    return tag


def ensure_image(tag: str | None = None) -> str:
    """Return ``tag`` (default: ``default_image()``), building the default one if missing."""
    tag = tag or default_image()
    if tag in _PRESENT or _docker("image", "inspect", "--format", "{{.Id}}", tag).returncode == 0:
        _PRESENT.add(tag)
        return tag
    if tag != default_image():
        raise EnvStartError(f"docker: the image {tag!r} is not here (docker pull or build it)")
    lock = Path(tempfile.gettempdir()) / "rlm-docker-build.lock"
    with open(lock, "a") as handle:  # one build at a time on this machine
        fcntl.flock(handle, fcntl.LOCK_EX)
        if _docker("image", "inspect", "--format", "{{.Id}}", tag).returncode != 0:
            build_image(tag)
    _PRESENT.add(tag)
    return tag


class DockerEnvironment(ProcessEnvironment):
    """The runner in a Docker container, one container per REPL (restarted after a kill).

    Isolates: the network (``--network none``: no interface but loopback, so neither the
    host's ports nor any other address can be reached), the host's files (only the scratch
    directory is mounted, at ``/work``, and the control directory, read-only at ``/rlm``;
    the image holds just a Python), the host's
    environment variables and processes, and the host's privileges (runs as ``nobody``
    (the host user when not root), no capabilities, ``no-new-privileges``, read-only root
    file system, a small ``/tmp`` tmpfs).  Limits: ``memory_mb`` (each process's address
    space, and the cgroup for all of them together, no swap: past it the kernel kills the
    largest; the REPL is restarted if that was it), ``max_processes`` (``--pids-limit``),
    ``cpus``, and the per-block wall-clock kill.  Does NOT isolate: the kernel (a container is not a
    VM), the disk space written under ``/work`` (only ``max_file_mb`` per file).
    ``docker_args`` are added to ``docker run`` as they are.
    """

    name = "docker"
    isolation = ("container: no network, only its scratch dir mounted, read-only root, "
                 "non-root without capabilities, memory/pids cgroup limits, wall-clock kill")
    use_unix_socket = True
    guest_root: str = "/work"
    guest_control: str = "/rlm"
    scratch_quota = True

    def __init__(self, *, image: str | None = None, python: str = "python3",
                 cpus: float | None = None, tmpfs_mb: int = 64,
                 docker_args: tuple[str, ...] | list[str] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image = image
        self.python = python
        self.cpus = cpus
        self.tmpfs_mb = tmpfs_mb
        self.docker_args = list(docker_args)
        self.instance_id = uuid.uuid4().hex[:12]
        self.container: str | None = None
        self._spawns = 0

    @classmethod
    def probe(cls) -> None:
        """A Docker engine that answers ``docker info``."""
        reason = engine_error()
        if reason is not None:
            raise EnvStartError(f"docker: {reason}")

    # -- hooks of ProcessEnvironment -----------------------------------------------------------
    def prepare(self) -> None:
        """The image, before the first container: the default one is built from this
        host's Python when missing (never pulled)."""
        self.image = ensure_image(self.image)

    def process_env(self) -> dict[str, str]:
        """The ``docker`` client's environment (the container's is passed with ``-e``)."""
        return {key: value for key, value in os.environ.items()
                if key in _CLIENT_ENV or key.startswith("DOCKER_")}

    def guest_ids(self) -> tuple[int, int] | None:
        return (_NOBODY, _NOBODY)

    def launch_command(self, runner: Path) -> list[str]:
        assert self.scratch is not None and self.control is not None and self.image is not None
        user = f"{_NOBODY}:{_NOBODY}" if os.geteuid() == 0 else f"{os.getuid()}:{os.getgid()}"
        self._spawns += 1
        self.container = f"rlm-{self.instance_id}-{self._spawns}"
        guest_env = super().process_env()
        # The container's pids cgroup counts its processes; RLIMIT_NPROC would count every
        # process of the same user on the host.  Memory: RLIMIT_AS per process, the cgroup
        # for all of them.
        guest_env["RLM_LIMITS"] = self.limits.env(processes=None)
        command = [shutil.which("docker") or "docker", "run", "--rm", "-i", "--init",
                   "--name", self.container, "--label", f"{LABEL}=docker",
                   "--label", f"rlm.instance={self.instance_id}", "--log-driver", "none",
                   "--network", "none", "--read-only",
                   "--tmpfs", f"/tmp:rw,nosuid,nodev,size={self.tmpfs_mb}m",
                   "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                   "--user", user, "-v", f"{self.scratch}:{self.guest_root}",
                   "-v", f"{self.control}:{self.guest_control}:ro", "-w", self.guest_root]
        memory = self.limits.rlimits()["memory_bytes"]
        if memory is not None:
            command += ["--memory", str(memory), "--memory-swap", str(memory)]
        if self.limits.max_processes is not None:
            command += ["--pids-limit", str(self.limits.max_processes)]
        if self.cpus is not None:
            command += ["--cpus", str(self.cpus)]
        for key, value in guest_env.items():
            command += ["-e", f"{key}={value}"]
        # -E -s, not -I: the runner imports guest.py from its own directory.
        return [*command, *self.docker_args, self.image, self.python, "-E", "-s", "-u",
                self.guest_path(runner)]

    def process_killed(self) -> None:
        """Remove the container: killing the ``docker run`` client leaves it running."""
        name, self.container = self.container, None
        if name is None:
            return
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            done = _docker("rm", "--force", name, timeout=60)
            deadline = time.monotonic() + 30
            # "removal already in progress" (its --rm): wait until it is gone.
            while (done.returncode != 0 and time.monotonic() < deadline
                   and _docker("container", "inspect", name).returncode == 0):
                time.sleep(0.1)


if __name__ == "__main__":
    reason = engine_error()
    if reason is not None:
        sys.exit(f"docker: {reason}")
    print(ensure_image())
