"""The escapes the ``sandbox`` environment claims to stop, each tried from model code."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest

from rlm.environments.sandbox import GUEST_CONTROL, SandboxEnvironment
from rlm.errors import EnvStartError
from tests.environments.conftest import require_available

PROJECT = Path(__file__).resolve().parents[2]
MAX_PROCESSES = 64


def host(message):
    return {"text": "answered"} if message.get("op") == "llm_query" else {"error": {
        "type": "BridgeProtocolError", "message": "not in this test"}}


@pytest.fixture(scope="module", autouse=True)
def _bwrap_available():
    require_available("sandbox")


@pytest.fixture(scope="module")
def secret_file():
    handle, name = tempfile.mkstemp(prefix="rlm-sandbox-secret-")  # the host's tmp dir
    os.write(handle, b"TOPSECRET")
    os.close(handle)
    yield Path(name)
    os.unlink(name)


@pytest.fixture(scope="module")
def env():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", "sk-sandbox-test-" + secrets.token_hex(8))
        environment = SandboxEnvironment(max_processes=MAX_PROCESSES, memory_mb=1024)
        environment.start(host)
    environment.set_variable("context", "ctx")
    yield environment
    environment.close()


def run(env: SandboxEnvironment, code: str) -> str:
    result = env.execute(code)
    assert result.error is None, result.error
    return result.stdout


def attempt(env: SandboxEnvironment, action: str) -> str:
    """Run ``action`` (an expression) in the sandbox: its repr, or the error's class."""
    return run(env, f"try:\n    print(repr({action}))\nexcept Exception as e:\n"
                    "    print('DENIED', type(e).__name__)").strip()


def test_host_files_cannot_be_read(env, secret_file):
    for path in ("/etc/shadow", PROJECT / "pyproject.toml", PROJECT / "src" / "rlm" / "api.py",
                 secret_file, "/root/.bashrc", "/proc/1/root/etc/shadow"):
        assert attempt(env, f"open({str(path)!r}).read()").startswith("DENIED"), path
    assert attempt(env, "__import__('rlm')") == "DENIED ModuleNotFoundError"
    for path in ("/root", PROJECT, "/etc"):  # only passable on the way to the Python install
        assert attempt(env, f"__import__('os').listdir({str(path)!r})").startswith("DENIED")


def test_no_host_variable_reaches_the_sandbox(env):
    out = run(env, "import os\nprint(sorted(os.environ))\nprint(open('/proc/self/environ').read())")
    assert "OPENAI_API_KEY" not in out and "sk-sandbox-test" not in out


def test_host_processes_cannot_be_seen_or_signalled(env):
    pid = os.getpid()
    assert attempt(env, f"open('/proc/{pid}/environ', 'rb').read()").startswith("DENIED")
    assert attempt(env, f"__import__('sys').modules['os'].kill({pid}, 0)") == (
        "DENIED ProcessLookupError")
    code = "import json, os\nprint(json.dumps([p for p in os.listdir('/proc') if p.isdigit()]))"
    assert sorted(json.loads(run(env, code))) == ["1", "2"]  # bwrap's init and the runner


def test_writes_outside_the_scratch_dir_fail(env):
    targets = [f"/tmp/x-{secrets.token_hex(4)}", "/usr/x", "/x", f"{GUEST_CONTROL}/x",
               str(Path(sys.prefix) / "x"), str(PROJECT / "x"), "/dev/shm/x"]
    for path in targets:
        assert attempt(env, f"open({path!r}, 'w').write('x')").startswith("DENIED"), path
    assert not any(Path(p).exists() for p in targets[:1] + targets[4:6])
    assert attempt(env, "open('mine.txt', 'w').write('x')") == "1"
    assert (env.scratch / "mine.txt").read_text() == "x"


def test_a_symlink_out_of_the_scratch_dir_leads_nowhere(env, secret_file):
    run(env, f"import os\nos.symlink({str(secret_file)!r}, 'link')\n"
             "os.symlink('/etc/shadow', 'shadow')")
    assert attempt(env, "open('link').read()") == "DENIED FileNotFoundError"
    assert attempt(env, "open('shadow').read()") == "DENIED FileNotFoundError"


def test_the_host_loopback_cannot_be_reached(env):
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        out = attempt(env, f"__import__('socket').create_connection(('127.0.0.1', {port}), 2)")
        assert out == "DENIED ConnectionRefusedError"
        with pytest.raises(BlockingIOError):
            server.accept()


def test_no_route_to_any_other_address(env):
    # Only try a public address once the sandbox shows no interface but the loopback.
    interfaces = run(env, "import socket\nprint(sorted(n for _, n in socket.if_nameindex()))")
    assert interfaces.strip() == "['lo']"
    code = ("import socket, time\nstart = time.monotonic()\ntry:\n"
            "    socket.create_connection(('1.1.1.1', 80), 1)\nexcept OSError as e:\n"
            "    print(e.errno, time.monotonic() - start)")
    errno, elapsed = run(env, code).split()
    assert int(errno) == 101 and float(elapsed) < 0.5  # ENETUNREACH, at once


def test_no_new_user_namespace_but_children_and_threads_work(env):
    code = ("import ctypes, subprocess, threading\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "print(libc.unshare(0x10000000), ctypes.get_errno())\n"  # CLONE_NEWUSER
            "done = []\nt = threading.Thread(target=done.append, args=('thread',))\n"
            "t.start()\nt.join()\nprint(*done)\n"
            "print(subprocess.run(['echo', 'child'], capture_output=True, text=True).stdout)")
    assert run(env, code).split() == ["-1", "1", "thread", "child"]  # EPERM


def test_a_memory_bomb_fails_and_the_repl_recovers(env):
    result = env.execute("hog = bytearray(8 << 30)")
    assert "MemoryError" in result.error
    assert run(env, "print(context)") == "ctx\n"


def test_many_processes_share_one_memory_cap(env):
    if not any(path.parts[4] == "memory" for path in env.cgroups or []):
        pytest.skip("no memory cgroup can be made here: only the per-process limit holds")
    code = """import sys, time
real = sys.modules['os']
children = []
for _ in range(3):
    pid = real.fork()
    if pid == 0:
        hog = bytearray(450 << 20)
        time.sleep(3)
        real._exit(0)
    children.append(pid)
print(sum(real.waitpid(pid, 0)[1] == 9 for pid in children))"""
    assert int(run(env, code)) >= 1  # the cgroup's OOM killer took at least one
    assert run(env, "print(context)") == "ctx\n"


def test_killing_the_parent_does_not_reach_the_host(env):
    out = run(env, "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                   "print(libc.kill(os.getppid(), 9), libc.kill(-1, 9))")
    assert out.split() == ["-1", "-1"]
    assert run(env, "print(context)") == "ctx\n"


def test_a_forged_lm_request_is_refused(env):
    code = f"""import hashlib, json, socket, struct
body = json.dumps({{'op': 'llm_query', 'prompt': 'x', 'token': 'guess'}}).encode()
frame = struct.pack('>I', len(body)) + body
for opening in (frame[:40], b'rlm-lm/1' + hashlib.sha256(b'guess').digest()):
    s = socket.socket(socket.AF_UNIX)
    s.connect('{GUEST_CONTROL}/lm.sock')
    s.sendall(opening)  # a frame without the preamble, then a preamble with a wrong token
    data = b''
    while chunk := s.recv(65536):
        data += chunk
    size = struct.unpack('>I', data[:4])[0]
    print(json.loads(data[4:4 + size])['error']['message'][:22])
    s.close()"""
    assert run(env, code).splitlines() == ["not an LM handler conn", "missing or wrong token"]
    assert run(env, "print(llm_query('q'))") == "answered\n"


def test_close_leaves_nothing_behind():
    environment = SandboxEnvironment()
    environment.start(host)
    scratch, cgroups = environment.home, list(environment.cgroups or [])
    pid = environment._proc.pid
    environment.close()
    assert not scratch.exists() and not any(path.exists() for path in cgroups)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_missing_bwrap_is_named(monkeypatch):
    class Unprobed(SandboxEnvironment):
        """A class of its own: its probe has not run yet (probes run once per class)."""

    monkeypatch.setattr(shutil, "which", lambda name: None)
    reason = Unprobed.unavailable_reason()
    assert reason == "sandbox: bubblewrap is not installed (apt-get install bubblewrap)"
    environment = Unprobed()
    with pytest.raises(EnvStartError) as raised:
        environment.start(host)
    assert str(raised.value) == reason
    assert environment.home is None  # refused before anything was made
    environment.close()
    # The module's fixture probed SandboxEnvironment before the patch: that answer stands.
    assert SandboxEnvironment.unavailable_reason() is None
