"""What the "pyodide" environment claims to isolate, checked from inside the REPL."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from rlm import registry
from tests.environments.conftest import require_available

SECRET = "sk-pyodide-test-secret"


def host(message):
    return {"text": "echo:" + message.get("prompt", "")}


@pytest.fixture(scope="module")
def env():
    require_available("pyodide")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", SECRET)
        environment = registry.create_environment("pyodide", {"block_timeout_s": 30.0})
        environment.start(host)
    yield environment
    environment.close()


def run(env, code: str) -> tuple[str, str]:
    result = env.execute(code)
    return result.stdout, result.error or ""


def test_only_read_permission_on_two_folders(env):
    flags = [arg for arg in env.launch_command(env.control / "runner.py")
             if arg.startswith("--allow")]
    assert flags == [f"--allow-read={env._pyodide.parent.parent},{env.control}"]
    out, error = run(env, "import js\nfrom pyodide.ffi import to_js\n"
                          "for name in ['net', 'write', 'run', 'env', 'ffi', 'sys']:\n"
                          "    ask = to_js({'name': name}, dict_converter=js.Object.fromEntries)\n"
                          "    print(name, js.Deno.permissions.requestSync(ask).state)")
    assert not error
    assert out.split() == [word for name in ["net", "write", "run", "env", "ffi", "sys"]
                           for word in (name, "denied")]


def test_no_network(env):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        _, error = run(env, f"import socket\nsocket.create_connection(('127.0.0.1', {port}), 1)")
        assert "OSError" in error
        _, error = run(env, f"import js\npending = js.fetch('http://127.0.0.1:{port}/')")
        assert not error  # a promise that never settles: the event loop never runs
        _, error = run(env, "from pyodide.http import open_url\nopen_url('http://127.0.0.1:1/')")
        assert error
        listener.settimeout(0.5)
        with pytest.raises(TimeoutError):
            listener.accept()


def test_no_host_file_outside_its_folders(env, tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    _, error = run(env, f"open({str(secret)!r}).read()")
    assert "FileNotFoundError" in error  # Python sees an in-memory file system
    _, error = run(env, f"import js\njs.Deno.readTextFileSync({str(secret)!r})")
    assert "NotCapable" in error and SECRET not in error
    _, error = run(env, "import js\njs.Deno.readTextFileSync('/etc/hostname')")
    assert "NotCapable" in error


def test_no_host_environment_variable(env):
    environ = Path(f"/proc/{env._proc.pid}/environ").read_bytes()
    assert SECRET.encode() not in environ and b"OPENAI_API_KEY" not in environ
    out, error = run(env, "import os\nprint(os.environ.get('OPENAI_API_KEY'))")
    assert out == "None\n" and not error
    for getter in ["js.Deno.env.get('OPENAI_API_KEY')", "js.process.env.OPENAI_API_KEY"]:
        _, error = run(env, f"import js\n{getter}")
        assert "NotCapable" in error


def test_no_host_writes(env, tmp_path: Path):
    target = tmp_path / "written.txt"
    _, error = run(env, f"import js\njs.Deno.writeTextFileSync({str(target)!r}, 'x')")
    assert "NotCapable" in error
    _, error = run(env, f"import os\nos.makedirs({str(tmp_path)!r}, exist_ok=True)\n"
                        f"open({str(target)!r}, 'w').write('x')")
    assert not error  # written to the in-memory file system only
    assert not target.exists()


def test_no_subprocess(env):
    _, error = run(env, "import subprocess\nsubprocess.run(['true'])")
    assert "OSError" in error
    _, error = run(env, "import js\njs.Deno.Command.new('true').outputSync()")
    assert "NotCapable" in error


def test_stdin_and_stdout_cannot_touch_the_control_channel(env):
    out, error = run(env, "import os\nos.write(1, b'\\x00\\x00\\x00\\x05junk')\n"
                          "print(llm_query('still'))")
    assert out == "echo:still\n" and not error
    _, error = run(env, "input()")
    assert "EOFError" in error


def test_a_broken_control_channel_restarts_the_repl(env):
    env.set_variable("context", "kept")
    _, error = run(env, "import js\njs.Deno.stdout.writeSync(js.Uint8Array.new(8))")
    assert "ProcessDied" in error
    assert run(env, "print(context, llm_query('x'))") == ("kept echo:x\n", "")


def test_close_leaves_no_process_or_folder():
    require_available("pyodide")
    environment = registry.create_environment("pyodide")
    environment.start(host)
    proc, scratch = environment._proc, environment.home
    environment.close()
    assert proc.poll() is not None and not scratch.exists()
