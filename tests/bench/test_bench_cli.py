"""``rlm bench`` on the scripted backend."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rlm.bench.runner import read_rows
from rlm.bench.tasks import make_instance
from rlm.cli import cli
from rlm.cli.bench import parse_lengths
from rlm.config import DEFAULT_BACKEND
from tests.conftest import repl


@pytest.fixture
def cli_runner() -> CliRunner:
    return CliRunner()


def test_bench_runs_resumes_and_reports(cli_runner, tmp_path):
    instance = make_instance("niah", 2**13, 0)
    script = tmp_path / "replies.json"
    # one instance, methods in order: base answers, then the RLM turn answers with code
    script.write_text(json.dumps([instance.answer, repl("FINAL('wrong')")]))
    out, report = tmp_path / "results.jsonl", tmp_path / "report"
    args = ["bench", "-b", "scripted", "--script", str(script), "-t", "niah", "-l", "2^13",
            "--methods", "base,rlm", "--out", str(out), "--report", str(report),
            "--no-progress"]
    result = cli_runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "| base | 1.00 |" in result.stderr and "| rlm | 0.00 |" in result.stderr
    assert f"2 results in {out}" in result.stderr
    assert {r["method"]: r["score"] for r in read_rows(out)} == {"base": 1.0, "rlm": 0.0}
    assert (report / "report.md").is_file() and (report / "scores.png").is_file()
    # run again: everything is in the file already, no reply is needed
    script.write_text("[]")
    again = cli_runner.invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert len(read_rows(out)) == 2


@pytest.mark.parametrize(("args", "message"), [
    (["-b", "scripted"], "needs --script"),
    (["-l", "lots"], "cannot read length"),
    (["-t", "nope", "--script", "{script}"], "unknown task"),
])
def test_bench_usage_errors_exit_2(cli_runner, tmp_path, args, message):
    script = tmp_path / "x.json"
    script.write_text('["a"]')
    args = [a.format(script=script) for a in args]
    result = cli_runner.invoke(cli, ["bench", "--no-progress", "--out",
                                     str(tmp_path / "r.jsonl"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_parse_lengths():
    assert parse_lengths("8192, 2^13,2**14,64K,1M") == [8192, 8192, 16384, 65536, 2**20]


def test_bench_uses_the_cli_default_backend(cli_runner, tmp_path, monkeypatch):
    assert DEFAULT_BACKEND == "local"
    monkeypatch.setattr("rlm.config.DEFAULT_BACKEND", "no-such-backend")
    result = cli_runner.invoke(cli, ["bench", "--no-progress", "-t", "niah", "--out",
                                     str(tmp_path / "r.jsonl")])
    assert result.exit_code == 2
    assert "no-such-backend" in result.stderr
