"""Runs the hostile catalogue against one environment, in a host process of its own.

    python driver.py ENV CATALOGUE OUT.jsonl FIRST_INDEX

The test suite starts this script per environment (in a new session), so an attack that
kills or corrupts its host only takes this process down.  For each entry it writes a
"start" line, then a "result" line: {"id", "verdict": "stopped" | "not stopped", "detail"}.
"""

from __future__ import annotations

import builtins
import json
import os
import secrets
import signal
import socket
import sys
import sysconfig
import tempfile
import threading
import time
import tomllib
from pathlib import Path

from rlm import registry

PROJECT_FILE = Path(__file__).resolve().parents[2] / "pyproject.toml"
ESCAPE_MARK = "ESCAPED"


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

    def check(self, rule: str) -> str | None:
        """A host-side effect that happened, or None."""
        rule = self.fill(rule, None)
        if rule.startswith("absent:"):
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


def judge(host: Host, env, entry: dict) -> tuple[str, str]:
    code = host.fill(entry["code"], lm_address(env))
    started = time.monotonic()
    result = env.execute(code, timeout_s=20 if entry.get("timeout") else None)
    elapsed = time.monotonic() - started
    out = result.stdout + result.stderr
    detail = (out.strip().splitlines() or [""])[-1][:160] or (result.error or "")[-160:]
    if ESCAPE_MARK in out:
        return "not stopped", detail
    if entry.get("timeout") and not result.error:
        return "not stopped", f"the block ran to its end in {elapsed:.0f}s"
    if "max_stdout" in entry and len(result.stdout) > entry["max_stdout"]:
        return "not stopped", f"{len(result.stdout):,} characters of output reached the host"
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


def make_env(name: str):
    options = {"block_timeout_s": 15.0} if registry.get_environment_class(name).supports_timeout \
        else {}
    env = registry.create_environment(name, options)
    env.start(host_call)
    env.set_variable("context", "hostile test")
    return env


def main() -> None:
    name, catalogue, out_path, first = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    entries = tomllib.loads(Path(catalogue).read_text())["entry"]
    host = Host()
    env = make_env(name)
    with open(out_path, "a", encoding="utf-8") as out:
        def write(record: dict) -> None:
            out.write(json.dumps(record) + "\n")
            out.flush()

        for index, entry in enumerate(entries[first:], start=first):
            write({"event": "start", "index": index, "id": entry["id"]})
            if name in entry.get("unsafe_in", []):
                verdict, detail = "not stopped", "not run: it would harm the machine"
            else:
                try:
                    verdict, detail = judge(host, env, entry)
                except Exception as exc:  # the environment broke: a finding, then a new one
                    verdict, detail = "not stopped", f"environment failed: {exc}"[:160]
                    env.close()
                    env = make_env(name)
            write({"event": "result", "index": index, "id": entry["id"], "verdict": verdict,
                   "detail": detail})
    env.close()
    os._exit(0)  # skip interpreter teardown: an attack may have left the process odd


if __name__ == "__main__":
    main()
