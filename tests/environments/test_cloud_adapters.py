"""Each cloud adapter makes the SDK calls ``RemoteEnvironment`` needs, and a missing SDK
names its extra.  Paid clouds cannot run here, so each SDK is a fake module over one
``FakeCloud``: files land in a temporary folder and the launched command really runs there,
so the adapter's own command line starts the real broker and the REPL works end to end."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from importlib import resources
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from rlm import registry
from rlm.errors import EnvStartError, MissingDependencyError

PORT = 8765  # the adapters' default broker port


class FakeCloud:
    """One 'sandbox' on this machine; ``calls`` records what the adapter asked for."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[tuple[str, dict]] = []
        self.files: dict[str, bytes] = {}
        self.argv: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.ports: dict[int, int] = {}

    def record(self, call: str, /, **details) -> None:
        self.calls.append((call, details))

    def local(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def write(self, path: str, data: bytes) -> None:
        self.files[path] = data
        self.local(path).parent.mkdir(parents=True, exist_ok=True)
        self.local(path).write_bytes(data)

    def run(self, command: list[str] | str) -> None:
        self.argv = shlex.split(command) if isinstance(command, str) else list(command)
        argv = [sys.executable if arg == "python3" else str(self.local(arg))
                if arg.startswith("/") else arg for arg in self.argv]
        # The adapter asks for 0.0.0.0 on a fixed port; here the broker binds 127.0.0.1:0.
        argv[argv.index("--bind") + 1] = "127.0.0.1"
        wanted = int(argv[argv.index("--port") + 1])
        argv[argv.index("--port") + 1] = "0"
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env={"PATH": os.environ["PATH"]},
                                start_new_session=True)
        self.procs.append(proc)
        self.ports[wanted] = json.loads(proc.stdout.readline())["port"]
        proc.stdout.close()

    def host(self, port: int) -> str:
        return f"127.0.0.1:{self.ports[port]}"

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def fake_modal(cloud: FakeCloud) -> dict[str, ModuleType]:
    class Sandbox:
        filesystem = SimpleNamespace(write_bytes=lambda data, path: cloud.write(path, data))

        @staticmethod
        def create(**options):
            cloud.record("create", **options)
            return Sandbox()

        def exec(self, *argv, **options):
            cloud.record("exec", **options)
            cloud.run(list(argv))

        def tunnels(self):
            return {port: SimpleNamespace(url=f"http://{cloud.host(port)}")
                    for port in cloud.ports}

        def terminate(self):
            cloud.record("teardown")

    modal = ModuleType("modal")
    modal.App = SimpleNamespace(lookup=lambda name, create_if_missing: f"app:{name}")
    modal.Image = SimpleNamespace(debian_slim=lambda python_version: f"debian:{python_version}")
    modal.Sandbox = Sandbox
    stream_type = ModuleType("modal.stream_type")
    stream_type.StreamType = SimpleNamespace(DEVNULL=-3)
    return {"modal": modal, "modal.stream_type": stream_type}


def fake_e2b(cloud: FakeCloud) -> dict[str, ModuleType]:
    class Sandbox:
        files = SimpleNamespace(write=lambda path, data: cloud.write(path, data))
        connection_config = SimpleNamespace(debug=True)  # E2B's local mode: plain http

        @staticmethod
        def create(**options):
            cloud.record("create", **options)
            return Sandbox()

        def __init__(self):
            self.commands = SimpleNamespace(run=self._run)

        def _run(self, command, **options):
            cloud.record("run", **options)
            cloud.run(command)

        def get_host(self, port):
            return cloud.host(port)

        def kill(self):
            cloud.record("teardown")

    return {"e2b": _module("e2b", Sandbox=Sandbox)}


def fake_daytona(cloud: FakeCloud) -> dict[str, ModuleType]:
    def execute(session, request):
        cloud.record("execute_session_command", session=session, run_async=request.run_async)
        cloud.run(request.command)

    sandbox = SimpleNamespace(
        fs=SimpleNamespace(create_folder=lambda path, mode: cloud.record("mkdir", path=path),
                           upload_file=lambda data, path: cloud.write(path, data)),
        process=SimpleNamespace(create_session=lambda session: None,
                                execute_session_command=execute),
        get_preview_link=lambda port: SimpleNamespace(url=f"http://{cloud.host(port)}",
                                                      token="preview-token"))

    class Daytona:
        def create(self, params, timeout):
            cloud.record("create", params=params, timeout=timeout)
            return sandbox

        def delete(self, box):
            cloud.record("teardown")

    return {"daytona": _module("daytona", Daytona=Daytona, DaytonaConfig=dict,
                               CreateSandboxFromImageParams=SimpleNamespace,
                               SessionExecuteRequest=SimpleNamespace)}


def fake_prime(cloud: FakeCloud) -> dict[str, ModuleType]:
    class APIClient:
        def request(self, method, path, json):
            cloud.record("expose", method=method, path=path, **json)
            return {"url": f"http://{cloud.host(json['port'])}"}

    class SandboxClient:
        def __init__(self, api):
            self.api = api

        def create(self, request):
            cloud.record("create", **vars(request))
            return SimpleNamespace(id="sb-1")

        def wait_for_creation(self, sandbox_id):
            cloud.record("wait", id=sandbox_id)

        def execute_command(self, sandbox_id, command):
            cloud.record("execute_command", command=command)

        def upload_bytes(self, sandbox_id, path, data, filename):
            assert filename == path.rsplit("/", 1)[1]
            cloud.write(path, data)

        def start_background_job(self, sandbox_id, command):
            cloud.record("start_background_job", id=sandbox_id)
            cloud.run(command)

        def delete(self, sandbox_id):
            cloud.record("teardown", id=sandbox_id)

    return {"prime_sandboxes": _module("prime_sandboxes", APIClient=APIClient,
                                       SandboxClient=SandboxClient,
                                       CreateSandboxRequest=SimpleNamespace)}


def _module(name: str, **attributes) -> ModuleType:
    module = ModuleType(name)
    module.__dict__.update(attributes)
    return module


FAKES = {"modal": fake_modal, "e2b": fake_e2b, "daytona": fake_daytona, "prime": fake_prime}


@pytest.fixture
def cloud(tmp_path: Path):
    made = FakeCloud(tmp_path)
    yield made
    made.stop()


def _install(name: str, cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch) -> None:
    for module_name, module in FAKES[name](cloud).items():
        monkeypatch.setitem(sys.modules, module_name, module)


def _details(cloud: FakeCloud, call: str) -> dict:
    found = [details for name, details in cloud.calls if name == call]
    assert len(found) == 1, (call, cloud.calls)
    return found[0]


@pytest.mark.parametrize("name", sorted(FAKES))
def test_the_adapter_runs_the_broker_in_its_sandbox(name, cloud, monkeypatch):
    _install(name, cloud, monkeypatch)
    env = registry.create_environment(name, {"block_timeout_s": 30})
    env.start(lambda message: {"text": f"echo:{message['prompt']}"})
    try:
        assert _details(cloud, "create") is not None
        shipped = {f"/tmp/rlm/{n}": resources.files("rlm.bridge").joinpath(n).read_bytes()
                   for n in ("guest.py", "broker.py")}
        assert {p: cloud.files[p] for p in shipped} == shipped
        token = cloud.files["/tmp/rlm/token"].decode()
        assert not cloud.local("/tmp/rlm/token").exists()  # read once by the broker, deleted
        assert token not in " ".join(cloud.argv) and "--token-file" in cloud.argv
        assert cloud.argv[:2] == ["python3", "/tmp/rlm/broker.py"]
        assert cloud.argv[cloud.argv.index("--bind") + 1] == "0.0.0.0"
        assert env.base_url == f"http://{cloud.host(PORT)}"  # the URL the SDK gave
        env.set_variable("context", "abc")
        assert env.execute("print(llm_query(context))").stdout == "echo:abc\n"
    finally:
        env.close()
    assert cloud.calls[-1][0] == "teardown"
    assert all(proc.wait(10) == 0 for proc in cloud.procs)  # /shutdown ended the broker


def test_each_adapter_asks_its_sdk_for_what_it_needs(cloud, monkeypatch):
    for name in FAKES:
        _install(name, cloud, monkeypatch)
    for name in FAKES:
        env = registry.create_environment(name, {})
        env.start(lambda message: {"text": ""})
        env.close()
    created = [details for call, details in cloud.calls if call == "create"]
    modal, e2b, daytona, prime = created
    assert modal["encrypted_ports"] == [PORT] and modal["image"] == "debian:3.11"
    assert modal["timeout"] == 3600
    assert e2b == {"template": None, "timeout": 3600}
    assert daytona["params"] is None  # Daytona's default Python snapshot
    assert prime["docker_image"] == "python:3.11-slim"
    exec_options = [d for c, d in cloud.calls if c in ("exec", "run")]
    assert exec_options == [{"stdout": -3, "stderr": -3}, {"background": True, "timeout": 0}]
    assert _details(cloud, "execute_session_command")["run_async"] is True
    assert _details(cloud, "mkdir")["path"] == "/tmp/rlm"
    assert _details(cloud, "execute_command")["command"] == "mkdir -p /tmp/rlm"
    assert _details(cloud, "expose") == {"method": "POST", "path": "/sandbox/sb-1/expose",
                                         "port": PORT, "name": "rlm-broker", "protocol": "HTTP"}
    assert sum(call == "teardown" for call, _ in cloud.calls) == 4


def test_daytona_sends_its_preview_token_and_keeps_authorization_free(cloud, monkeypatch):
    _install("daytona", cloud, monkeypatch)
    env = registry.create_environment("daytona", {})
    env.start(lambda message: {"text": ""})
    try:
        headers = env.request_headers()
        assert headers["X-Daytona-Preview-Token"] == "preview-token"
        assert "Authorization" not in headers and headers["X-RLM-Token"]
    finally:
        env.close()


def test_a_failed_start_deletes_the_sandbox(cloud, monkeypatch):
    _install("modal", cloud, monkeypatch)
    monkeypatch.setattr(sys.modules["modal"].Sandbox, "tunnels", lambda self: {})
    env = registry.create_environment("modal", {})
    with pytest.raises(EnvStartError, match="cannot start the sandbox"):
        env.start(lambda message: {"text": ""})
    assert cloud.calls[-1][0] == "teardown"
    env.close()
    assert [call for call, _ in cloud.calls].count("teardown") == 1


@pytest.mark.parametrize("name, module", [("modal", "modal"), ("e2b", "e2b"),
                                          ("daytona", "daytona"), ("prime", "prime_sandboxes")])
def test_a_missing_sdk_names_its_extra(name, module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # makes ``import module`` fail
    with pytest.raises(MissingDependencyError, match=rf"pip install 'rlm\[{name}\]'"):
        registry.create_environment(name, {})
