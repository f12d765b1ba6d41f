"""``rlm batch``: a JSONL file of questions through ``RLM.batch``, on the scripted backend."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from rlm.cli import cli
from tests.conftest import repl

batch_module = importlib.import_module("rlm.cli.batch")  # ``rlm.cli.batch`` is the command

ECHO = repl("FINAL(str(context))")


#: Default traces go under a private RLM_USER_PATH (tests/cli/conftest.py).
pytestmark = pytest.mark.usefixtures("traces_home")


def write_input(path: Path, *rows: dict[str, Any] | str) -> Path:
    """One line per row: a dict as JSON, a str as it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def invoke(cli_runner, *args: Any):
    return cli_runner.invoke(cli, ["batch", *map(str, args)])


def test_one_line_per_item_in_order_with_default_ids(cli_runner, script, tmp_path):
    source = write_input(tmp_path / "in.jsonl", {"question": "alpha"}, {"question": "beta"},
                         {"id": "third", "question": "gamma", "context": "inline text"})
    out = tmp_path / "out.jsonl"
    result = invoke(cli_runner, source, "-o", out, "--script", script(ECHO, ECHO, ECHO),
                    "-j", 1)
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert [r["id"] for r in rows] == [1, 2, "third"]  # the line number unless given
    assert [r["response"] for r in rows] == ["alpha", "beta", "inline text"]
    assert all(r["stop_reason"] == "final" and r["error"] is None for r in rows)
    for key in ("cost_usd", "iterations", "trace_path", "usage", "elapsed_s"):
        assert key in rows[0]
    assert Path(rows[0]["trace_path"]).is_file()
    assert result.stdout == ""  # results go to the file, the rest to stderr
    assert "[3/3] id=third final" in result.stderr


def test_concurrent_items_each_get_exactly_one_line(cli_runner, script, tmp_path):
    questions = [f"q{i}" for i in range(8)]
    source = write_input(tmp_path / "in.jsonl", *({"question": q} for q in questions))
    out = tmp_path / "out.jsonl"
    result = invoke(cli_runner, source, "-o", out, "--script", script(*[ECHO] * 8), "-j", 4)
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert sorted(r["id"] for r in rows) == list(range(1, 9))
    assert {r["id"]: r["response"] for r in rows} == {i + 1: q for i, q in enumerate(questions)}


def test_context_path_is_relative_to_the_input_folder(cli_runner, script, tmp_path,
                                                      monkeypatch):
    data = tmp_path / "data"
    (data / "docs" / "sub").mkdir(parents=True)
    (data / "docs" / "a.txt").write_text("alpha")
    (data / "docs" / "sub" / "b.txt").write_text("beta")
    (data / "note.txt").write_text("the note")
    absolute = tmp_path / "elsewhere.txt"
    absolute.write_text("far away")
    source = write_input(data / "in.jsonl",
                         {"id": "file", "question": "q", "context_path": "note.txt"},
                         {"id": "folder", "question": "q", "context_path": "docs"},
                         {"id": "abs", "question": "q", "context_path": str(absolute)})
    monkeypatch.chdir(tmp_path)  # not the input's folder
    reply = repl("FINAL(context if isinstance(context, str) else ','.join(sorted(context)))")
    out = tmp_path / "out.jsonl"
    result = invoke(cli_runner, source, "-o", out, "--script", script(reply, reply, reply),
                    "-j", 1, "--no-trace")
    assert result.exit_code == 0, result.output
    answers = {r["id"]: r["response"] for r in read_rows(out)}
    assert answers == {"file": "the note", "folder": "a.txt,sub/b.txt", "abs": "far away"}


def test_bad_lines_are_named_and_nothing_runs(cli_runner, script, tmp_path, traces_home):
    (tmp_path / "exists.txt").write_text("x")
    source = write_input(
        tmp_path / "in.jsonl",
        {"id": "ok", "question": "fine", "context_path": "exists.txt"},  # line 1
        "{not json",                                                      # line 2
        {"id": "no-question", "context": "x"},                            # line 3
        {"question": "q", "context": "x", "context_path": "exists.txt"},  # line 4
        {"id": "ok", "question": "again"},                                # line 5
        {"question": "q", "context_path": "missing.txt"},                 # line 6
        {"question": "q", "contxt": "typo"},                              # line 7
    )
    out = tmp_path / "out.jsonl"
    result = invoke(cli_runner, source, "-o", out, "--script", script(ECHO))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    message = lines[0]
    assert "6 bad lines, nothing was run" in message
    for number, what in ((2, "not JSON"), (3, 'no "question"'),
                         (4, 'give "context" or "context_path", not both'),
                         (5, "duplicate id 'ok' (first on line 1)"),
                         (6, "context_path not found: missing.txt"),
                         (7, "unknown key 'contxt'")):
        assert f"line {number}: {what}" in message
    assert "line 1:" not in message
    assert not out.exists()
    assert not (traces_home / "traces").exists()
    assert "backend=" not in result.stderr  # no RLM was built


def test_a_failed_item_gives_the_failure_exit_code(cli_runner, script, tmp_path):
    source = write_input(tmp_path / "in.jsonl", *({"question": q} for q in "abc"))
    out = tmp_path / "out.jsonl"
    # two replies for three items: the third finds none left (BadResponseError)
    result = invoke(cli_runner, source, "-o", out, "--script", script(ECHO, ECHO), "-j", 1)
    assert result.exit_code == batch_module.EXIT_FAILED == 4, result.output
    rows = read_rows(out)
    assert [(r["id"], r["stop_reason"]) for r in rows] == [(1, "final"), (2, "final"),
                                                          (3, "error")]
    assert "ran out of responses" in rows[2]["error"]
    assert [r["error"] for r in rows[:2]] == [None, None]
    assert "[3/3] id=3 error" in result.stderr
    assert "run the same command again to retry the failed items" in result.stderr


def test_summary_counts_done_failed_cost_and_elapsed(cli_runner, script, tmp_path):
    source = write_input(tmp_path / "in.jsonl", *({"question": q} for q in "abc"))
    result = invoke(cli_runner, source, "-o", tmp_path / "out.jsonl",
                    "--script", script(ECHO, ECHO), "-j", 1)
    summary = [line for line in result.stderr.splitlines()
               if line.startswith("rlm batch: ") and " done · " in line]
    assert len(summary) == 1, result.stderr
    assert re.fullmatch(r"rlm batch: 2 done · 1 failed · 0 skipped · \$0\.0000 · \d+\.\ds",
                        summary[0]), summary[0]


def test_an_item_stopped_by_a_limit_counts_as_done_with_exit_3(cli_runner, script, tmp_path):
    source = write_input(tmp_path / "in.jsonl", {"question": "a"})
    out = tmp_path / "out.jsonl"
    busy = repl("x = 1")  # never answers
    result = invoke(cli_runner, source, "-o", out, "--script", script(busy, busy, busy),
                    "--max-iterations", 1)
    assert result.exit_code == 3, result.output
    assert read_rows(out)[0]["stop_reason"] == "max_iterations"
    assert "1 done · 1 of them stopped by a limit · 0 failed" in result.stderr
    again = invoke(cli_runner, source, "-o", out, "--script", script(busy))
    assert again.exit_code == 0 and "skipping 1 item already done" in again.stderr


def test_resume_skips_done_ids_and_reruns_failed_ones(cli_runner, script, tmp_path):
    source = write_input(tmp_path / "in.jsonl", *({"question": q} for q in "abc"))
    out = tmp_path / "out.jsonl"
    first = invoke(cli_runner, source, "-o", out, "--script", script(ECHO, ECHO), "-j", 1)
    assert first.exit_code == 4
    # Only one reply: running the two done items again would run out of replies.
    second = invoke(cli_runner, source, "-o", out,
                    "--script", script(repl("FINAL('second run')")))
    assert second.exit_code == 0, second.output
    assert "skipping 2 items already done" in second.stderr
    assert "[1/1] id=3 final" in second.stderr
    assert "1 done · 0 failed · 2 skipped" in second.stderr
    rows = read_rows(out)
    assert [(r["id"], r["response"]) for r in rows] == [(1, "a"), (2, "b"),
                                                       (3, "second run")]  # one line per id
    third = invoke(cli_runner, source, "-o", out, "--script", script(ECHO))
    assert third.exit_code == 0 and "skipping 3 items already done" in third.stderr
    assert "0 done · 0 failed · 3 skipped" in third.stderr
    assert read_rows(out) == rows


def test_restart_ignores_the_existing_output(cli_runner, script, tmp_path):
    source = write_input(tmp_path / "in.jsonl", {"question": "a"}, {"question": "b"})
    out = tmp_path / "out.jsonl"
    assert invoke(cli_runner, source, "-o", out, "--script", script(ECHO, ECHO)).exit_code == 0
    again = repl("FINAL('again')")
    result = invoke(cli_runner, source, "-o", out, "--restart",
                    "--script", script(again, again))
    assert result.exit_code == 0, result.output
    assert "skipping" not in result.stderr
    rows = read_rows(out)
    assert sorted(r["id"] for r in rows) == [1, 2]  # truncated, not appended to
    assert {r["response"] for r in rows} == {"again"}


def test_restart_keeps_the_output_when_the_batch_is_refused(cli_runner, script, tmp_path,
                                                            monkeypatch):
    from rlm.api import RLM
    from rlm.errors import ConfigError

    source = write_input(tmp_path / "in.jsonl", {"question": "a"})
    out = tmp_path / "out.jsonl"
    assert invoke(cli_runner, source, "-o", out, "--script", script(ECHO)).exit_code == 0
    before = out.read_text(encoding="utf-8")

    def refuse(self, *args, **kwargs):
        raise ConfigError("refused before running")

    monkeypatch.setattr(RLM, "batch", refuse)
    result = invoke(cli_runner, source, "-o", out, "--restart", "--script", script(ECHO))
    assert result.exit_code == 2
    assert "Error: refused before running" in result.stderr
    assert out.read_text(encoding="utf-8") == before


def test_an_unfinished_last_output_line_is_dropped_and_its_item_rerun(cli_runner, script,
                                                                      tmp_path):
    source = write_input(tmp_path / "in.jsonl", {"question": "a"}, {"question": "b"})
    out = tmp_path / "out.jsonl"
    assert invoke(cli_runner, source, "-o", out, "--script", script(ECHO, ECHO),
                  "-j", 1).exit_code == 0
    text = out.read_text(encoding="utf-8")
    out.write_text(text[: text.rindex("\n", 0, -1) + 20], encoding="utf-8")  # a kill -9
    result = invoke(cli_runner, source, "-o", out, "--script", script(ECHO))
    assert result.exit_code == 0, result.output
    assert "dropping the unfinished last line" in result.stderr
    assert [(r["id"], r["response"]) for r in read_rows(out)] == [(1, "a"), (2, "b")]


def test_an_output_that_is_not_a_batch_result_is_refused(cli_runner, script, tmp_path):
    source = write_input(tmp_path / "in.jsonl", {"question": "a"})
    out = write_input(tmp_path / "out.jsonl", {"something": "else"}, {"id": 1})
    result = invoke(cli_runner, source, "-o", out, "--script", script(ECHO))
    assert result.exit_code == 2
    assert "line 1 is not a result of rlm batch" in result.stderr
    assert read_rows(out) == [{"something": "else"}, {"id": 1}]  # left as it was


def test_lines_written_before_an_abort_stay(cli_runner, script, tmp_path, monkeypatch):
    source = write_input(tmp_path / "in.jsonl", *({"question": q} for q in "abc"))
    out = tmp_path / "out.jsonl"
    write = batch_module._Results.__call__

    def abort_after_the_first(self, index, result):
        write(self, index, result)
        raise KeyboardInterrupt

    monkeypatch.setattr(batch_module._Results, "__call__", abort_after_the_first)
    result = invoke(cli_runner, source, "-o", out, "--script", script(ECHO, ECHO, ECHO),
                    "-j", 1)
    assert result.exit_code == 130
    assert [(r["id"], r["response"]) for r in read_rows(out)] == [(1, "a")]
    assert "1 done · 0 failed · 2 not run · 0 skipped" in result.stderr


def test_each_line_is_on_disk_when_its_item_finishes(cli_runner, script, tmp_path,
                                                     monkeypatch):
    source = write_input(tmp_path / "in.jsonl", *({"question": q} for q in "abc"))
    out = tmp_path / "out.jsonl"
    write = batch_module._Results.__call__
    seen: list[int] = []

    def then_look(self, index, result):
        write(self, index, result)
        seen.append(len(out.read_text(encoding="utf-8").splitlines()))

    monkeypatch.setattr(batch_module._Results, "__call__", then_look)
    result = invoke(cli_runner, source, "-o", out, "--script", script(ECHO, ECHO, ECHO),
                    "-j", 1)
    assert result.exit_code == 0, result.output
    assert seen == [1, 2, 3]


@pytest.mark.parametrize("args, message", [
    (["--address", "auto"], "--address is for --executor ray"),
    (["--trace", "t", "--no-trace"], "not both"),
    (["--executor", "nope"], "nope"),
    (["--batch-budget", "-1"], "--batch-budget"),
])
def test_bad_flags_exit_2(cli_runner, script, tmp_path, args, message):
    source = write_input(tmp_path / "in.jsonl", {"question": "a"})
    result = invoke(cli_runner, source, "-o", tmp_path / "out.jsonl",
                    "--script", script(ECHO), *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_the_output_must_not_be_the_input(cli_runner, script, tmp_path):
    source = write_input(tmp_path / "in.jsonl", {"question": "a"})
    result = invoke(cli_runner, source, "-o", source, "--script", script(ECHO))
    assert result.exit_code == 2
    assert source.read_text(encoding="utf-8").strip() == '{"question": "a"}'


def test_batch_is_listed_in_the_help(cli_runner):
    result = cli_runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert re.search(r"^\s+batch\s+Answer every question", result.stdout, re.MULTILINE)
