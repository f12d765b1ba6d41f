"""``rlm serve`` / ``rlm mcp`` as real subprocesses on 127.0.0.1, and the files they read:
a config of scripted profiles, their scripts and a data directory."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

__all__ = ["LENGTH", "LiveServer", "repl", "start", "write_setup"]

_LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


#: The scripted reply that answers with the length of the input.
LENGTH = repl("FINAL(len(context))")


@dataclass
class LiveServer:
    """One server process: ``url`` is ``http://127.0.0.1:PORT``."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path
    trace_dir: Path

    def stderr(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/healthz", timeout=5).json()

    def wait_idle(self, timeout_s: float = 10.0) -> float:
        """Seconds until no run is under way (``AssertionError`` past ``timeout_s``)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.health()["active_runs"] == 0:
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"runs still under way after {timeout_s} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def write_setup(root: Path) -> dict[str, Path]:
    """A config file of scripted profiles, their scripts, a data directory with a file
    and, outside it, a secret file (with a link to it from inside)."""
    scripts = {
        "length.json": [LENGTH],
        "loop.json": [repl("x = 1")] * 60,
        "two.json": [repl("n = len(context)"), repl("FINAL(n)")],
        "session.json": [LENGTH, repl("FINAL([len(context_0), history[0]['answer']])")],
    }
    for name, replies in scripts.items():
        (root / name).write_text(json.dumps(replies), encoding="utf-8")
    config = root / "profiles.toml"
    config.write_text("""
[profiles.rlm]
backend = "scripted"
script = "length.json"
description = "answers with the input's length"

[profiles.slow]
backend = "scripted"
script = "loop.json"
backend_options = { latency_s = 0.25 }

[profiles.two-turns]
backend = "scripted"
script = "two.json"
max_iterations = 3

[profiles.priced]
backend = "scripted"
script = "length.json"
max_budget = 0.01
backend_options = { cost_per_call = 0.01 }

[profiles.session]
backend = "scripted"
script = "session.json"
""", encoding="utf-8")
    data = root / "data"
    (data / "docs").mkdir(parents=True)
    (data / "doc.txt").write_text("x" * 1234, encoding="utf-8")
    (data / "docs" / "a.txt").write_text("hello", encoding="utf-8")
    secret = root / "secret.txt"
    secret.write_text("top secret", encoding="utf-8")
    (data / "link.txt").symlink_to(secret)
    return {"config": config, "data": data, "secret": secret, "root": root}


def start(args: list[str], *, home: Path, trace_dir: Path, log: Path,
          timeout_s: float = 60.0, env: dict[str, str] | None = None) -> LiveServer:
    """Start ``python -m rlm.cli ARGS`` and wait for its ``listening on`` line."""
    environ = {k: v for k, v in os.environ.items() if k != "RLM_SERVE_API_KEY"}
    environ.update({"RLM_USER_PATH": str(home), **(env or {})})
    handle = log.open("wb")
    process = subprocess.Popen([sys.executable, "-m", "rlm.cli", *args],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=handle, env=environ)
    handle.close()
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        match = _LISTENING.search(log.read_text(encoding="utf-8", errors="replace"))
        if match:
            server = LiveServer(process, match.group(1), log, trace_dir)
            with contextlib.suppress(httpx.HTTPError):
                if _ready(server):
                    return server
        if process.poll() is not None:
            raise AssertionError(f"the server exited ({process.returncode}):\n"
                                 + log.read_text(errors="replace"))
        time.sleep(0.05)
    process.kill()
    raise AssertionError("the server did not start:\n" + log.read_text(errors="replace"))


def _ready(server: LiveServer) -> bool:
    """Whether the server answers HTTP yet (any status will do)."""
    httpx.get(f"{server.url}/", timeout=2)
    return True
