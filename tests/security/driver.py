"""Runs the hostile catalogue against one environment, in a host process of its own.

    python driver.py ENV CATALOGUE OUT.jsonl FIRST_INDEX

The test suite starts this script per environment (in a new session), so an attack that
kills or corrupts its host only takes this process down.  For each entry it writes a
"start" line, then a "result" line: {"id", "verdict": "stopped" | "not stopped", "detail"}.
Each entry gets an environment of its own, closed after it; then the leftover check looks
for what the attack left on the machine (processes, and so the ports they listen on,
containers, cgroups, temp dirs, /dev/shm files), which makes the entry "not stopped" and
is cleaned up.
An entry whose host side hangs is recorded as such and this process exits.
"""

from __future__ import annotations

import builtins
import contextlib
import glob
import hashlib
import inspect
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import tomllib
from pathlib import Path

from rlm import registry
from rlm.environments.process import ProcessEnvironment

PROJECT_FILE = Path(__file__).resolve().parents[2] / "pyproject.toml"
ESCAPE_MARK = "ESCAPED"
#: How long the host side of one entry may take before it counts as hung.
HANG_S = 60.0


def host_call(message):
    if message.get("op") == "llm_query":
        return {"text": "answered"}
    return {"error": {"type": "BridgeProtocolError", "message": "not in this test"}}


class Host:
    """Bait and listeners on the host side, and the checks of host-side effects."""

    def __init__(self) -> None:
        # The key is in this process's environment from its start, as a real key would be.
        self.key = os.environ.setdefault("OPENAI_API_KEY", "sk-hostile-" + secrets.token_hex(8))
        self.dir = Path(tempfile.mkdtemp(prefix="rlm-hostile-host-",
                                         dir=os.environ.get("RLM_HOSTILE_DIR")))
        self.secret = self.dir / f"rlm-hostile-secret-{secrets.token_hex(4)}"
        self.secret.write_text("TOPSECRET " + self.key)
        self.host_file = self.dir / "host-file.txt"
        self.host_file.write_text("original")
        self.pristine = self._fingerprint(self.host_file)
        self.outside = self.dir / "written-from-the-repl.txt"
        self.site_file = Path(sysconfig.get_paths()["purelib"]) / "rlm_hostile_probe.py"
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.unix_path = str(self.dir / "host.sock")
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind(self.unix_path)
        self.unix.listen()
        for server in (self.tcp, self.unix):
            threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        self.sigterm = signal.getsignal(signal.SIGTERM)
        self.len = builtins.len

    @staticmethod
    def _accept(server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                return

    def fill(self, code: str, lm_address: object) -> str:
        values = {
            "HOST_PID": str(os.getpid()), "SECRET_FILE": str(self.secret),
            "HOST_FILE": str(self.host_file), "OUTSIDE_FILE": str(self.outside),
            "SITE_FILE": str(self.site_file), "PROJECT_FILE": str(PROJECT_FILE),
            "LISTEN_PORT": str(self.tcp.getsockname()[1]),
            "HOST_UNIX_SOCKET": self.unix_path, "LM_ADDRESS": repr(lm_address),
        }
        for name, value in values.items():
            code = code.replace(f"@@{name}@@", value)
        return code

    @staticmethod
    def _fingerprint(path: Path) -> tuple[int, int, int, str]:
        info = os.lstat(path)
        return (info.st_uid, info.st_gid, info.st_mode,
                hashlib.sha256(path.read_bytes()).hexdigest())

    def check(self, rule: str) -> str | None:
        """A host-side effect that happened, or None."""
        rule = self.fill(rule, None)
        if rule.startswith("pristine:"):
            path = Path(rule.removeprefix("pristine:"))
            try:
                same = path.is_file() and not path.is_symlink() and \
                    self._fingerprint(path) == self.pristine
            except OSError:
                same = False
            if not same:
                path.unlink(missing_ok=True)
                path.write_text("original")
                os.chmod(path, self.pristine[2] & 0o7777)
                self.pristine = self._fingerprint(path)
                return f"{path} was changed on the host (owner, mode or content)"
        elif rule.startswith("absent:"):
            path = Path(rule.removeprefix("absent:"))
            if path.exists():
                path.unlink()
                return f"{path} was created on the host"
        elif rule.startswith("unchanged:"):
            path = Path(rule.removeprefix("unchanged:"))
            if not path.exists() or path.read_text() != "original":
                path.write_text("original")
                return f"{path} was changed on the host"
        elif rule == "builtin_len" and builtins.len is not self.len:
            builtins.len = self.len
            return "the host's builtins were patched"
        elif rule == "sigterm_handler" and signal.getsignal(signal.SIGTERM) is not self.sigterm:
            signal.signal(signal.SIGTERM, self.sigterm)
            return "the host's SIGTERM handler was replaced"
        return None


def lm_address(env: object) -> object:
    server = getattr(env, "_server", None)
    if server is None:
        return None
    guest = getattr(env, "guest_lm_address", None)
    address = guest(server) if guest else server.address
    return list(address) if isinstance(address, tuple) else address


def _memory_peak_reset() -> None:
    """Reset this process's peak resident size (VmHWM), so a later read is this entry's."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class ThreadWatch:
    """Samples this process's thread count while an attack runs."""

    def __init__(self) -> None:
        self.base = len(os.listdir("/proc/self/task"))
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, len(os.listdir("/proc/self/task")))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak - self.base - 1


def judge(host: Host, env, entry: dict) -> tuple[str, str]:
    code = host.fill(entry["code"], lm_address(env))
    _memory_peak_reset()
    rss_before = _status("VmRSS")
    threads = ThreadWatch()
    started = time.monotonic()
    result = env.execute(code, timeout_s=20 if entry.get("timeout") else None)
    elapsed = time.monotonic() - started
    extra_threads = threads.stop()
    peak_mb = (_status("VmHWM") - rss_before) >> 10
    out = result.stdout + result.stderr
    detail = (out.strip().splitlines() or [""])[-1][:160] or (result.error or "")[-160:]
    if ESCAPE_MARK in out:
        return "not stopped", detail
    if entry.get("timeout") and not result.error:
        return "not stopped", f"the block ran to its end in {elapsed:.0f}s"
    if "max_elapsed" in entry and elapsed > entry["max_elapsed"]:
        return "not stopped", f"the host waited {elapsed:.0f}s for the block"
    if "max_stdout" in entry and len(result.stdout) > entry["max_stdout"]:
        return "not stopped", f"{len(result.stdout):,} characters of output reached the host"
    if "max_final" in entry and result.final is not None and \
            len(result.final.text) > entry["max_final"]:
        return "not stopped", f"an answer of {len(result.final.text):,} characters reached " \
            "the host"
    if "peak_mb" in entry and peak_mb > entry["peak_mb"]:
        return "not stopped", f"the host grew by {peak_mb} MB"
    if "max_threads" in entry and extra_threads > entry["max_threads"]:
        return "not stopped", f"the host ran {extra_threads} more threads"
    if entry.get("host_set_var"):
        env.set_variable("planted", "HOST DATA " + secrets.token_hex(4))
    if "host_check" in entry:
        effect = host.check(entry["host_check"])
        if effect:
            return "not stopped", effect
    if "after" in entry:
        after = env.execute(host.fill(entry["after"], None))
        if ESCAPE_MARK in after.stdout:
            return "not stopped", after.stdout.strip()[:160]
    alive = env.execute("print('alive')")
    if alive.stdout.strip() != "alive":
        return "not stopped", f"the REPL no longer answers: {alive.error}"
    return "stopped", (result.error or detail or "")[-160:]


class Leftovers:
    """What is on the machine before an entry, to find what the entry left behind.

    Only what is the entry's is counted, so that other work on the machine is neither
    blamed nor killed: processes that are forks of this driver (they carry its marker
    variable), of its session, of the environment's own uid (``env.uid``: a fresh one),
    or whose working directory was the environment's; temporary directories that are the
    environment's or its uid's; its containers and cgroups; new /dev/shm files.  (A
    listening port needs a process, so the processes cover ports.)
    """

    def __init__(self, env_name: str) -> None:
        self.env_name = env_name
        self.pids = self._pids()
        self.shm = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
        self.temps = self._temps()
        self.env_dirs: list[str] = []
        self.env_uid: int | None = None
        self.env_instance: str | None = None
        self.env_cgroups: list[str] = []
        self.marker = ("RLM_HOSTILE_DIR=" + os.environ.get("RLM_HOSTILE_DIR", "")).encode()

    def watch(self, env: object) -> None:
        """Remember the directories of ``env`` (a process working there is the entry's)."""
        for attribute in ("home", "scratch", "_private", "_state"):
            value = getattr(env, attribute, None)
            if value is not None:
                self.env_dirs.append(str(value))
        uid = getattr(env, "uid", None)
        self.env_uid = uid if isinstance(uid, int) and uid != os.geteuid() else None
        self.env_instance = getattr(env, "instance_id", None)
        self.env_cgroups = [str(path) for path in getattr(env, "cgroups", None) or []]

    @staticmethod
    def _pids() -> set[int]:
        return {int(p) for p in os.listdir("/proc") if p.isdigit()}

    @staticmethod
    def _temps() -> set[str]:
        root = tempfile.gettempdir()
        return {p for p in glob.glob(os.path.join(root, "rlm-*"))
                if not os.path.basename(p).startswith("rlm-hostile-")}

    def _guest_uid(self, uid: int) -> bool:
        return self.env_uid is not None and uid == self.env_uid

    def _ours(self, pid: int) -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            info = os.stat(f"/proc/{pid}")
        except OSError:
            return False
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z" or fields[1] == "2" or pid == os.getpid():  # zombie, kernel thread
            return False
        if int(fields[3]) == os.getsid(0) or self._guest_uid(info.st_uid):
            return True
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd").removesuffix(" (deleted)")
            if any(cwd == d or cwd.startswith(d + "/") for d in self.env_dirs):
                return True
            return self.marker in Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return False

    def _owner_is_guest(self, path: str) -> bool:
        try:
            return self._guest_uid(os.lstat(path).st_uid)
        except OSError:
            return False

    def _containers(self) -> list[str]:
        if self.env_name != "docker" or shutil.which("docker") is None:
            return []
        if self.env_instance is None:
            return []
        done = subprocess.run(["docker", "ps", "-aq", "--filter",
                               f"label=rlm.instance={self.env_instance}"],
                              capture_output=True, text=True, timeout=60, check=False)
        return done.stdout.split()

    def check(self) -> str | None:
        """What the entry left behind (its processes, containers and files removed), or None."""
        for _ in range(30):  # processes and containers may take a moment to go
            pids = [pid for pid in self._pids() - self.pids if self._ours(pid)]
            containers = self._containers()
            shm = set(os.listdir("/dev/shm")) - self.shm if os.path.isdir("/dev/shm") else set()
            temps = {path for path in self._temps() - self.temps
                     if path in self.env_dirs or self._owner_is_guest(path)}
            temps |= {path for path in self.env_dirs if os.path.lexists(path)}
            cgroups = {path for path in self.env_cgroups if os.path.exists(path)}
            if not (pids or containers or shm or temps or cgroups):
                return None
            time.sleep(0.1)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for container in containers:
            subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=False)
        for name in shm:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join("/dev/shm", name))
        for path in temps:
            shutil.rmtree(path, ignore_errors=True)
        found = [f"{len(pids)} processes" if pids else "",
                 f"{len(containers)} containers" if containers else "",
                 f"/dev/shm files {sorted(shm)[:2]}" if shm else "",
                 f"temp dirs {sorted(temps)[:2]}" if temps else "",
                 f"cgroups {sorted(cgroups)[:2]}" if cgroups else ""]
        return "left behind: " + ", ".join(f for f in found if f)


def make_env(name: str):
    cls = registry.get_environment_class(name)
    options: dict = {"block_timeout_s": 15.0} if cls.supports_timeout else {}
    if issubclass(cls, ProcessEnvironment) and \
            "max_disk_mb" in inspect.signature(ProcessEnvironment.__init__).parameters:
        options["max_disk_mb"] = 256  # the disk-filling entries write more than this
    env = registry.create_environment(name, options)
    env.start(host_call)
    env.set_variable("context", "hostile test")
    return env


def run_entry(host: Host, name: str, entry: dict) -> tuple[str, str]:
    """One entry in an environment of its own, then the leftover check."""
    before = Leftovers(name)
    env = make_env(name)
    before.watch(env)
    try:
        verdict, detail = judge(host, env, entry)
    except Exception as exc:  # the environment broke: a finding
        verdict, detail = "not stopped", f"environment failed: {type(exc).__name__}: {exc}"
    finally:
        env.close()
    left = before.check()
    if left and verdict == "stopped":
        verdict, detail = "not stopped", left
    return verdict, detail[:160]


def main() -> None:
    name, catalogue, out_path, first = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    entries = tomllib.loads(Path(catalogue).read_text())["entry"]
    host = Host()
    with open(out_path, "a", encoding="utf-8") as out:
        def write(record: dict) -> None:
            out.write(json.dumps(record) + "\n")
            out.flush()

        for index, entry in enumerate(entries[first:], start=first):
            write({"event": "start", "index": index, "id": entry["id"]})
            if name in entry.get("unsafe_in", []):
                verdict, detail = "not stopped", "not run: it would harm the machine"
            else:
                # In the main thread, as a caller's REPL would be; a watchdog records a hang
                # and ends this process (the next one goes on from the next entry).
                def hung(entry_id: str = entry["id"], at: int = index) -> None:
                    write({"event": "result", "index": at, "id": entry_id,
                           "verdict": "not stopped",
                           "detail": f"the host hung for more than {HANG_S:g}s"})
                    os._exit(0)

                watchdog = threading.Timer(HANG_S, hung)
                watchdog.daemon = True
                watchdog.start()
                verdict, detail = run_entry(host, name, entry)
                watchdog.cancel()
            write({"event": "result", "index": index, "id": entry["id"], "verdict": verdict,
                   "detail": detail})
    os._exit(0)  # skip interpreter teardown: an attack may have left the process odd


if __name__ == "__main__":
    main()
