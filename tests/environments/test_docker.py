"""What the docker environment claims beyond the shared suite: what its container cannot
reach, its limits, and that it leaves no container behind.  Needs a Docker engine
(scripts/docker-engine.sh starts one); skipped without one, except under CI."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from rlm.environments.docker_env import LABEL, DockerEnvironment
from tests.environments.conftest import require_available

SECRET = "sk-rlm-test-secret-never-in-the-container"


def host(message):
    if message.get("op") == "llm_query":
        return {"text": f"echo:{message['prompt']}"}
    return {"error": {"type": "BridgeProtocolError", "message": "unsupported in this test"}}


def containers(**labels: str) -> list[str]:
    filters = [arg for key, value in labels.items() for arg in ("--filter", f"label={key}={value}")]
    done = subprocess.run(["docker", "ps", "--all", "--quiet", *filters], capture_output=True,
                          text=True, check=True, timeout=60)
    return done.stdout.split()


@pytest.fixture(scope="module")
def env():
    require_available("docker")
    saved = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = SECRET  # the host has a key: the container must not see it
    environment = DockerEnvironment(memory_mb=256, max_processes=64, block_timeout_s=60)
    try:
        environment.start(host)
        environment.set_variable("context", "kept")
        yield environment
    finally:
        environment.close()
        if saved is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = saved
    assert containers(**{"rlm.instance": environment.instance_id}) == []


def run(env: DockerEnvironment, code: str) -> str:
    result = env.execute(code)
    assert result.error is None, result.error
    return result.stdout


def test_no_network(env):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        code = f"""
import errno, os, socket
assert os.listdir('/sys/class/net') == ['lo'], os.listdir('/sys/class/net')
def attempt(address):
    try:
        socket.create_connection(address, timeout=3).close()
        return 'connected'
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc))
print(attempt(('127.0.0.1', {port})), attempt(('203.0.113.1', 80)))
"""
        # Only loopback exists (checked first), so the second address sends nothing.
        assert run(env, code).split() == ["ECONNREFUSED", "ENETUNREACH"]
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing from the container reached the host's listener


def test_host_environment_and_files_are_invisible(env, tmp_path):
    marker = tmp_path / "host-only.txt"
    marker.write_text("secret")
    project = Path(__file__).resolve().parents[2]
    out = run(env, f"""
import os
print(os.environ.get('OPENAI_API_KEY'), '{SECRET}' in open('/proc/1/environ').read())
print(os.path.exists({str(marker)!r}), os.path.exists({str(project / "pyproject.toml")!r}))
print(os.path.exists('/root/.bashrc'), os.path.exists('/etc/debian_version'), os.getcwd())
""")
    assert out.split() == ["None", "False", "False", "False", "False", "False", "/work"]


def test_unprivileged_with_a_read_only_root(env):
    out = run(env, """
import errno, os
def write(path):
    try:
        with open(path, 'w') as handle:
            handle.write('x')
        return 'written'
    except OSError as exc:
        return errno.errorcode[exc.errno]
caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')]
print(write('/usr/x'), write('/etc/passwd'), write('/work/x'), write('/tmp/x'), caps[0])
""")
    assert out.split() == ["EROFS", "EROFS", "written", "written", "0000000000000000"]
    if os.geteuid() == 0:
        assert run(env, "import os; print(os.getuid(), os.getgid())") == "65534 65534\n"


def test_the_memory_limits_hold_and_the_repl_recovers(env):
    # One process: its address-space limit.
    assert "MemoryError" in env.execute("hog = b'x' * (1 << 30)").error
    # Several, each within that limit: the container's cgroup kills some of them.
    out = run(env, """
import os, signal, time
children = []
for _ in range(5):
    pid = os.fork()
    if pid == 0:
        hog = b'x' * (120 << 20)
        time.sleep(30)
        os._exit(0)
    children.append(pid)
time.sleep(3)
killed = 0
for pid in children:
    os.kill(pid, signal.SIGTERM)
    status = os.waitpid(pid, 0)[1]
    killed += os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
print(killed)
""")
    assert int(out) >= 2  # 5 x 120 MB in 256 MB
    assert run(env, "print(context, llm_query('back'))") == "kept echo:back\n"


def test_a_timeout_removes_the_killed_container(env):
    before = containers(**{"rlm.instance": env.instance_id})
    result = env.execute("while True: pass", timeout_s=1.0)
    assert "TimeoutError" in result.error
    after = containers(**{"rlm.instance": env.instance_id})
    assert len(after) == 1 and after != before
    assert run(env, "print(context)") == "kept\n"


def test_no_container_is_left_after_close():
    require_available("docker")
    environment = DockerEnvironment()
    environment.start(host)
    assert len(containers(**{LABEL: "docker", "rlm.instance": environment.instance_id})) == 1
    scratch = environment.home
    environment.close()
    assert containers(**{"rlm.instance": environment.instance_id}) == []
    assert scratch is not None and not scratch.exists()
