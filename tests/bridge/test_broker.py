"""The HTTP broker end to end: the broker process and the host's side, over real HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from importlib import resources
from pathlib import Path

import httpx
import pytest

from rlm import registry
from rlm.environments.files import RUNNER_FILES
from rlm.errors import EnvError

ENDPOINTS = [("GET", "/health"), ("POST", "/exec"), ("POST", "/interrupt"),
             ("POST", "/set_var"), ("POST", "/shutdown"), ("GET", "/pending"),
             ("POST", "/respond")]


def echo(message):
    if message["op"] == "llm_query_batched":
        return {"results": [{"text": f"echo:{p}"} for p in message["prompts"]]}
    return {"text": f"echo:{message['prompt']}"}


@pytest.fixture
def remote():
    """Started ``remote-local`` environments (the cloud code path), closed after the test."""
    made = []

    def make(call=echo, **options):
        env = registry.create_environment("remote-local", options)
        made.append(env)
        env.start(call)
        return env

    yield make
    for env in made:
        env.close()


@pytest.fixture
def bare_broker(tmp_path: Path):
    """``broker.py`` started as a cloud adapter starts it, with no host polling it:
    the test plays the host with plain HTTP.  The host counts as gone after 1 s."""
    for name in RUNNER_FILES:
        (tmp_path / name).write_bytes(resources.files("rlm.bridge").joinpath(name).read_bytes())
    token = secrets.token_urlsafe(16)
    (tmp_path / "token").write_text(token)
    proc = subprocess.Popen(
        [sys.executable, "-I", str(tmp_path / "broker.py"), "--port", "0", "--token-file",
         str(tmp_path / "token"), "--host-timeout", "1", "--exit-on-stdin-eof"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env={"PATH": os.environ["PATH"]}, start_new_session=True)
    port = json.loads(proc.stdout.readline())["port"]
    proc.stdout.close()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                          headers={"Authorization": f"Bearer {token}"})
    yield client
    client.close()
    proc.stdin.close()  # the broker ends with its host
    assert proc.wait(10) == 0
    assert not (tmp_path / "token").exists()


def test_every_endpoint_refuses_a_missing_or_wrong_token(remote):
    env = remote()
    bad = [{}, {"Authorization": "Bearer wrong"}, {"X-RLM-Token": "wrong"},
           {"Authorization": env.request_headers()["Authorization"][:-1]}]
    with httpx.Client(base_url=env.base_url) as client:
        for method, path in ENDPOINTS:
            for headers in bad:
                reply = client.request(method, path, headers=headers,
                                       json={"code": "ran = 1"} if method == "POST" else None)
                assert reply.status_code == 401, (method, path, headers)
        assert env.execute("print('ran' in dir())").stdout == "False\n"
        health = client.get("/health", headers=env.request_headers())
        assert health.status_code == 200 and health.json()["pid"] == env.pid


def test_the_token_is_never_on_the_command_line(remote):
    env = remote()
    token = env.request_headers()["Authorization"].removeprefix("Bearer ")
    assert token.encode() not in Path(f"/proc/{env.pid}/cmdline").read_bytes()
    assert not (Path(env.remote_dir) / "token").exists()


def test_the_long_poll_returns_as_soon_as_work_arrives(remote):
    env = remote()  # polls wait 15 s: each call would take that long without a wake-up
    code = ("import time\nslowest = 0\nfor i in range(5):\n    time.sleep(0.2)\n"
            "    t = time.perf_counter(); llm_query('x')\n"
            "    slowest = max(slowest, time.perf_counter() - t)\nprint(slowest)")
    assert float(env.execute(code).stdout) < 1.0


def test_a_hundred_concurrent_calls_are_all_answered_in_order(remote):
    active, peak, lock = [0], [0], threading.Lock()

    def host(message):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.02)
        with lock:
            active[0] -= 1
        return echo(message)

    env = remote(host)
    threads = env.execute(
        "import threading\nout = [None] * 100\n"
        "def ask(i):\n    out[i] = llm_query(f'q{i}')\n"
        "ts = [threading.Thread(target=ask, args=(i,)) for i in range(100)]\n"
        "for t in ts: t.start()\nfor t in ts: t.join()\n"
        "print(out == [f'echo:q{i}' for i in range(100)])")
    assert threads.stdout == "True\n", threads.error
    assert peak[0] > 1  # the host answered them concurrently
    batched = env.execute("r = llm_query_batched([f'b{i}' for i in range(100)])\n"
                          "print(r == [f'echo:b{i}' for i in range(100)])")
    assert batched.stdout == "True\n", batched.error


def test_an_unanswered_request_fails_cleanly_within_its_bound(remote):
    release = threading.Event()
    env = remote(lambda message: release.wait(30) and echo(message), request_timeout_s=1)
    try:
        started = time.monotonic()
        result = env.execute("try:\n    llm_query('x')\n"
                             "except LMQueryError as exc:\n    print('failed:', exc)")
        assert time.monotonic() - started < 5
        assert result.stdout.startswith("failed: BridgeProtocolError: no reply from the host")
    finally:
        release.set()


def test_a_dead_host_fails_the_pending_calls_within_the_bound(bare_broker):
    code = ("import time\nt = time.perf_counter()\ntry:\n    llm_query('x')\n"
            "except LMQueryError as exc:\n    print(round(time.perf_counter() - t), exc)")
    result = {}
    cell = threading.Thread(target=lambda: result.update(
        bare_broker.post("/exec", json={"code": code}).json()))
    cell.start()
    taken = bare_broker.get("/pending", params={"wait": "5"}).json()["requests"]
    assert [r["message"]["prompt"] for r in taken] == ["x"]  # delivered; now the host dies
    cell.join(10)
    assert "the host stopped polling" in result["stdout"]
    assert int(result["stdout"].split()[0]) <= 3
    again = bare_broker.post("/exec", json={"code": code}).json()
    assert again["stdout"].startswith("0 BridgeProtocolError: the host has not polled")
    late = bare_broker.post("/respond", json={"id": taken[0]["id"], "reply": {"text": "late"}})
    assert late.status_code == 409


def test_the_long_poll_wakes_for_new_work(bare_broker):
    def later():
        time.sleep(0.3)
        bare_broker.post("/exec", json={"code": "llm_query('x')", "timeout_s": 2})

    cell = threading.Thread(target=later)
    cell.start()
    started = time.monotonic()
    taken = bare_broker.get("/pending", params={"wait": "10"}).json()["requests"]
    assert len(taken) == 1 and time.monotonic() - started < 1.0
    cell.join(10)  # the call fails once the host is gone, which ends the cell


def test_malformed_requests_are_refused(bare_broker):
    assert bare_broker.post("/exec", content=b"[1]").status_code == 400
    assert bare_broker.post("/exec", json={}).status_code == 400
    for query in ({"name": "x", "format": "pickle"}, {"name": "no good", "format": "text"},
                  {"format": "text"}):
        assert bare_broker.post("/set_var", params=query, content=b"1").status_code == 400
    bad_utf8 = bare_broker.post("/set_var", params={"name": "x", "format": "text"},
                                content=b"\xff\xfe")
    assert bad_utf8.status_code == 400 and "UnicodeDecodeError" in bad_utf8.text
    assert bare_broker.get("/nope").status_code == 404


def test_a_killed_sandbox_gives_a_clear_error_not_a_hang(remote):
    env = remote()
    threading.Timer(0.5, os.kill, (env.pid, signal.SIGKILL)).start()
    started = time.monotonic()
    with pytest.raises(EnvError, match="cannot be reached"):
        env.execute("import time\ntime.sleep(60)")
    assert time.monotonic() - started < 5
    with pytest.raises(EnvError):
        env.execute("print(1)")
    env.close()


def test_a_block_that_ignores_the_interrupt_is_abandoned(remote):
    env = remote(block_timeout_s=1)
    env.set_variable("context", "kept")
    env.execute("mine = 1")
    result = env.execute("import time\ntime.sleep(30)")
    assert "REPL was restarted" in result.error
    assert env.execute("print(context, 'mine' in dir())").stdout == "kept False\n"


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except FileNotFoundError:
        return True
    return state in "ZX"  # a zombie waits only for its reaper


def test_close_leaves_no_process_port_or_file(remote):
    env = remote()
    child = int(env.execute("import subprocess\n"
                            "print(subprocess.Popen(['sleep', '60']).pid)").stdout)
    pid, port, scratch = env.pid, int(env.base_url.rsplit(":", 1)[1]), env.scratch
    env.close()
    deadline = time.monotonic() + 5
    while not (_gone(pid) and _gone(child)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(pid) and _gone(child)
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
    assert not scratch.exists()


def test_a_broker_whose_host_dies_ends_and_removes_its_folder():
    host = subprocess.Popen(
        [sys.executable, "-c", "import json, time\n"
         "from rlm.environments.remote_local import LocalRemoteEnvironment\n"
         "env = LocalRemoteEnvironment()\nenv.start(lambda message: {})\n"
         "print(json.dumps([env.pid, str(env.scratch)]), flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, start_new_session=True)
    pid, scratch = json.loads(host.stdout.readline())
    host.stdout.close()
    host.kill()  # no close(), no teardown: only the broker can clean up
    host.wait(10)
    deadline = time.monotonic() + 5
    while not (_gone(pid) and not Path(scratch).exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(pid) and not Path(scratch).exists()


def test_values_are_streamed_raw_across_chunks(remote):
    # POST /set_var carries the value's own bytes, sent and read in 4 MiB pieces: a
    # non-ASCII string whose pieces end mid-character on the wire, and bytes, arrive intact.
    env = remote()
    text = "é" * 3_000_001 + "end"
    env.set_variable("text", text)
    env.set_variable("raw", bytes(range(256)) * 40_000)
    result = env.execute("import hashlib\n"
                         "print(len(text), text[-4:], hashlib.sha256(raw).hexdigest())")
    expected = hashlib.sha256(bytes(range(256)) * 40_000).hexdigest()
    assert result.stdout.split() == [str(len(text)), "éend", expected]


def test_a_body_cut_short_is_refused(bare_broker):
    url = bare_broker.base_url
    with socket.create_connection((url.host, url.port)) as conn:
        token = bare_broker.headers["Authorization"]
        conn.sendall(f"POST /set_var?name=x&format=text HTTP/1.1\r\nHost: b\r\n"
                     f"Authorization: {token}\r\nContent-Length: 100\r\n\r\nonly ten b"
                     .encode())
        conn.shutdown(socket.SHUT_WR)
        reply = conn.makefile("rb").read().decode()
    assert reply.startswith("HTTP/1.1 400") and "ended after 10 of 100 bytes" in reply
    assert bare_broker.post("/exec", json={"code": "print('x' in dir())"}).json()["stdout"] == (
        "False\n")
