"""The ``rlm`` command line, run in-process with click's runner (and once as a real script)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlm.cli import cli
from rlm.config import DEFAULT_BACKEND
from tests.conftest import repl
from tests.fakes.openai_server import FakeOpenAIServer

#: Default traces go under a private RLM_USER_PATH (tests/cli/conftest.py).
pytestmark = pytest.mark.usefixtures("traces_home")


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_run_prints_only_the_answer(cli_runner, script):
    path = script(repl("FINAL(len(context))"))
    result = cli_runner.invoke(cli, ["run", "abc", "--script", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "3\n"
    assert "rlm: backend=scripted model=scripted env=local" in result.stderr
    assert "1 iteration · 1 LM call" in result.stderr


def test_default_backend_is_one_constant():
    from rlm import registry

    assert DEFAULT_BACKEND in registry.backend_names()


def test_json_output_has_the_result_fields(cli_runner, script):
    result = cli_runner.invoke(cli, ["run", "abc", "--json", "--script",
                                     str(script(repl("FINAL(context * 2)")))])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["response"] == "abcabc"
    assert data["stop_reason"] == "final"
    assert data["iterations"] == 1
    assert data["usage"]["scripted"]["calls"] == 1
    assert data["cost_usd"] == 0.0 and data["elapsed_s"] >= 0
    assert Path(data["trace_path"]).is_file()


def test_trace_is_written_by_default_and_shown(cli_runner, script, traces_home):
    result = cli_runner.invoke(cli, ["run", "what is it?", "--context", "-", "--script",
                                     str(script(repl("FINAL(context.strip().upper())")))],
                               input="hello\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == "HELLO\n"  # --context - reads stdin
    traces = list((traces_home / "traces").glob("*.jsonl"))
    assert len(traces) == 1
    assert f"trace written to {traces[0]}" in result.stderr

    shown = cli_runner.invoke(cli, ["trace", "show", str(traces[0])])
    assert shown.exit_code == 0, shown.output
    assert "d0 «what is it?»" in shown.stdout
    assert "→ HELLO  (final)" in shown.stdout
    assert "code final" in shown.stdout
    # without PATH: the newest trace of the user folder
    assert cli_runner.invoke(cli, ["trace", "show"]).stdout == shown.stdout

    as_json = cli_runner.invoke(cli, ["trace", "show", str(traces[0]), "--json"])
    tree = json.loads(as_json.stdout)
    assert tree["depth"] == 0 and tree["children"] == []
    assert tree["events"][0]["type"] == "run_start"


def test_trace_path_and_no_trace(cli_runner, script, traces_home, tmp_path):
    target = tmp_path / "mine.jsonl"
    reply = repl("FINAL('x')")
    result = cli_runner.invoke(cli, ["run", "q", "--trace", str(target),
                                     "--script", str(script(reply))])
    assert result.exit_code == 0 and target.is_file()
    result = cli_runner.invoke(cli, ["run", "q", "--no-trace", "--script", str(script(reply))])
    assert result.exit_code == 0 and "trace written" not in result.stderr
    assert not (traces_home / "traces").exists()
    both = cli_runner.invoke(cli, ["run", "q", "--no-trace", "--trace", str(target),
                                   "--script", str(script(reply))])
    assert both.exit_code == 2
    one_error_line(both.stderr)


def test_context_folder(cli_runner, script, tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "sub" / "b.txt").write_text("beta")
    result = cli_runner.invoke(cli, ["run", "list", "--context", str(folder), "--script",
                                     str(script(repl("FINAL(','.join(sorted(context)))")))])
    assert result.exit_code == 0, result.output
    assert result.stdout == "a.txt,sub/b.txt\n"


def test_missing_context_file(cli_runner, script, tmp_path):
    missing = tmp_path / "nope.txt"
    result = cli_runner.invoke(cli, ["run", "q", "--context", str(missing),
                                     "--script", str(script(repl("FINAL(1)")))])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "context file not found" in one_error_line(result.stderr)


def test_unknown_backend_lists_known_names(cli_runner):
    result = cli_runner.invoke(cli, ["run", "q", "-b", "nosuch"])
    assert result.exit_code == 2
    line = one_error_line(result.stderr)
    assert "nosuch" in line and "openai" in line and "scripted" in line


def test_openai_without_key(cli_runner, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = cli_runner.invoke(cli, ["run", "q", "-b", "openai", "-m", "gpt-5-mini"])
    assert result.exit_code == 2
    assert "OPENAI_API_KEY" in one_error_line(result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_model_and_base_url_reach_the_backend(cli_runner):
    with FakeOpenAIServer(reply=repl("FINAL('from the server')")) as fake:
        result = cli_runner.invoke(cli, ["run", "q", "-b", "openai", "-m", "fake-model",
                                         "--base-url", fake.url, "--no-trace"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "from the server\n"
    assert fake.requests[-1].body["model"] == "fake-model"
    assert "model=fake-model" in result.stderr


def test_bad_script_file(cli_runner, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}')
    result = cli_runner.invoke(cli, ["run", "q", "--script", str(bad)])
    assert result.exit_code == 2
    assert "JSON list" in one_error_line(result.stderr)


@pytest.mark.parametrize("command", ["run q", "bench --no-progress -t niah"])
def test_script_and_the_scripted_backend_go_together(cli_runner, script, command, tmp_path):
    args = [*command.split(), "--no-trace"] if command.startswith("run") else \
        [*command.split(), "--out", str(tmp_path / "r.jsonl")]
    wrong = cli_runner.invoke(cli, [*args, "-b", "openai", "--script", str(script("x"))])
    assert wrong.exit_code == 2
    assert "--script needs the scripted backend" in one_error_line(wrong.stderr)
    missing = cli_runner.invoke(cli, [*args, "-b", "scripted"])
    assert missing.exit_code == 2
    assert "the scripted backend needs --script FILE" in one_error_line(missing.stderr)


def test_only_the_embedded_model_gets_the_assembly_bar(tmp_path):
    from rlm.cli.backend_flags import AssemblyBar, backend_kwargs

    assert isinstance(backend_kwargs("local", model="m")["progress"], AssemblyBar)
    assert backend_kwargs("openai", model="m", base_url="u") == {"model": "m", "base_url": "u"}


class _Stderr(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty", [True, False])
def test_assembly_bar(monkeypatch, tty):
    from rlm.cli.backend_flags import AssemblyBar

    stderr = _Stderr(tty)
    monkeypatch.setattr(sys, "stderr", stderr)
    bar, block, total = AssemblyBar(), 8 << 20, 100 << 20
    for done in [*range(block, total, block), total]:
        bar("tiny", done, total)
    lines = stderr.getvalue().split("\r" if tty else "\n")
    if tty:  # redrawn in place every 5%, then one newline
        assert lines[0] == "" and len(lines) == 1 + 13 and stderr.getvalue().endswith("\n")
        assert lines[1] == "rlm: assembling tiny [##............................] 8/105 MB"
    else:  # a log file gets the first and the last line
        assert lines == ["rlm: assembling tiny [##............................] 8/105 MB",
                         "rlm: assembling tiny [##############################] 105/105 MB", ""]


def test_limit_stop_prints_partial_answer_and_exits_3(cli_runner, script):
    path = script(repl("print(1)"), "my best guess")  # the 2nd reply answers the extract call
    result = cli_runner.invoke(cli, ["run", "q", "--max-iterations", "1", "--script", str(path)])
    assert result.exit_code == 3, result.output
    assert result.stdout == "my best guess\n"
    assert "stopped early (max_iterations)" in result.stderr


def test_verbose_keeps_stdout_for_the_answer(cli_runner, script):
    result = cli_runner.invoke(cli, ["run", "abc", "-v", "--script",
                                     str(script(repl("FINAL(context)")))])
    assert result.exit_code == 0, result.output
    assert result.stdout == "abc\n"
    assert "d0" in result.stderr and "done" in result.stderr  # plain progress: not a tty


def test_backends_and_envs(cli_runner):
    names = cli_runner.invoke(cli, ["backends"]).stdout.split()
    assert {"scripted", "openai"} <= set(names)
    assert "local" in cli_runner.invoke(cli, ["envs"]).stdout.split()


def test_trace_show_missing_file(cli_runner, tmp_path):
    result = cli_runner.invoke(cli, ["trace", "show", str(tmp_path / "none.jsonl")])
    assert result.exit_code == 2
    one_error_line(result.stderr)


# -- the installed entry point ---------------------------------------------------------------
def rlm_command() -> list[str]:
    script = Path(sys.executable).with_name("rlm")
    return [str(script)] if script.exists() else [sys.executable, "-m", "rlm.cli"]


def test_console_script_runs(script, traces_home):
    env = {**os.environ, "RLM_USER_PATH": str(traces_home)}
    done = subprocess.run(
        [*rlm_command(), "run", "abc", "--script", str(script(repl("FINAL(len(context))")))],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "3\n"
    assert "Traceback" not in done.stderr


def test_model_code_writing_to_fd_1_cannot_break_the_json_output(script, traces_home):
    env = {**os.environ, "RLM_USER_PATH": str(traces_home)}
    code = repl("import os\nos.write(1, b'NOT JSON\\n')\nFINAL('ok')")
    done = subprocess.run(
        [*rlm_command(), "run", "q", "--json", "--script", str(script(code))],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["response"] == "ok"  # without the guard: "NOT JSON" first
    assert "NOT JSON" in done.stderr


def test_first_ctrl_c_cancels_with_the_partial_answer(script, traces_home):
    slow = repl("import time\ntime.sleep(0.2)\nprint('working')")
    env = {**os.environ, "RLM_USER_PATH": str(traces_home)}
    proc = subprocess.Popen(
        [*rlm_command(), "run", "q", "--json", "--script", str(script(*[slow] * 100))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stderr is not None
        assert proc.stderr.readline().startswith("rlm: backend=scripted")
        time.sleep(0.5)  # the handler is installed right after that line
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert json.loads(out)["stop_reason"] == "cancelled"
    assert "cancelling" in err and "Traceback" not in err


def test_a_final_line_that_exits_is_printed_as_the_answer(cli_runner, script):
    result = cli_runner.invoke(cli, ["run", "q", "--script", str(script("FINAL(exit(3))"))])
    assert result.exit_code == 0, result.output
    assert result.stdout == "exit(3)\n"


def test_a_system_exit_during_the_run_is_reported_not_silent(cli_runner, script, monkeypatch):
    from rlm.api import RLM

    def exits(self, *args, **kwargs):
        raise SystemExit(3)

    monkeypatch.setattr(RLM, "completion", exits)
    result = cli_runner.invoke(cli, ["run", "q", "--script", str(script(repl("FINAL(1)")))])
    assert result.exit_code == 1
    assert "Error: the run was ended by SystemExit(3)" in result.stderr
