"""``rlm run --schema FILE``: a structured answer on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlm.cli import cli
from tests.conftest import repl


@pytest.fixture(autouse=True)
def traces_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLM_USER_PATH", str(tmp_path / "user"))


def schema_file(tmp_path: Path, schema) -> Path:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema), encoding="utf-8")
    return path


def test_the_answer_is_printed_as_json(cli_runner, script, tmp_path):
    schema = schema_file(tmp_path, {"type": "object", "properties": {"n": {"type": "integer"}},
                                    "required": ["n"]})
    replies = script(repl("FINAL('three')"), repl("FINAL({'n': len(context)})"))
    result = cli_runner.invoke(cli, ["run", "abc", "--script", str(replies),
                                     "--schema", str(schema)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"n": 3}
    assert "2 iterations" in result.stderr


def test_json_output_carries_output(cli_runner, script, tmp_path):
    schema = schema_file(tmp_path, {"type": "array", "items": {"type": "string"}})
    result = cli_runner.invoke(cli, ["run", "abc", "--json", "--script",
                                     str(script(repl("FINAL(list(context))"))),
                                     "--schema", str(schema)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["output"] == ["a", "b", "c"] and data["output_error"] is None


def test_an_answer_that_never_matches_prints_the_text_and_says_why(cli_runner, script,
                                                                     tmp_path):
    schema = schema_file(tmp_path, {"type": "integer"})
    result = cli_runner.invoke(cli, ["run", "abc", "--max-iterations", "1", "--script",
                                     str(script(repl("FINAL('many')"), "many")),
                                     "--schema", str(schema)])
    assert result.exit_code == 3, result.output
    assert "the answer does not match the schema" in result.stderr


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "--schema"), ('{"type": "integr"}', "is not a JSON type"),
    ("[1]", "cannot turn")])
def test_a_bad_schema_file_is_a_usage_error(cli_runner, script, tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    result = cli_runner.invoke(cli, ["run", "abc", "--script",
                                     str(script(repl("FINAL(1)"))), "--schema", str(path)])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
