"""``rlm trace export --format chat-jsonl``: each node's conversation as one JSONL record."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlm import RLM
from rlm.backends.scripted import ScriptedBackend
from rlm.cli import cli
from rlm.trace import load_all
from rlm.trace.export import TurnLog, chat_records, conversation
from rlm.trace.fixtures import fixture_path
from rlm.types import Message
from tests.conftest import repl

FIXTURES = ("tree", "batch", "budget", "error", "session")
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_trace_fixtures.py"
REPLIES = [repl("print(len(context))"), repl("1 / 0"), repl("FINAL('done')")]


def _recorded_run(tmp_path: Path) -> tuple[Path, list[list[Message]]]:
    """A three-turn run traced to a file, and the messages each turn was sent."""
    sent: list[list[Message]] = []

    def reply(messages: list[Message], depth: int) -> str:
        sent.append([dict(m) for m in messages])
        return REPLIES[len(sent) - 1]

    path = tmp_path / "run.jsonl"
    with RLM(backend=ScriptedBackend(reply), trace=path) as rlm:
        assert rlm.completion("Count it.", context="x" * 50).response == "done"
    return path, sent


def test_the_exported_conversation_is_what_the_model_was_sent(tmp_path: Path):
    path, sent = _recorded_run(tmp_path)
    (record,) = chat_records(load_all(path))
    assert record["exact"] is True
    assert record["messages"] == [*sent[-1], {"role": "assistant", "content": REPLIES[-1]}]
    assert record["messages"][0]["role"] == "system"
    assert "ZeroDivisionError" in record["messages"][-2]["content"]  # as it was fed back
    assert record["outcome"]["response"] == "done" and record["stop_reason"] == "final"
    # every message is written once: the turns' events hold no repeats
    turns = [e.data for e in load_all(path)[0].lm_calls if e.data["purpose"] == "turn"]
    assert [t["kept_messages"] for t in turns] == [0, 3, 5]
    assert sum(len(t["messages"]) for t in turns) == len(sent[-1]) - 2  # minus 2 replies


def test_turn_log_records_a_rewritten_history_from_where_it_changed():
    log = TurnLog()
    first: list[Message] = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    assert log.fields("n", first, "r1") == {"kept_messages": 0, "messages": first}
    compacted: list[Message] = [first[0], {"role": "user", "content": "summary"}]
    fields = log.fields("n", compacted, "r2")
    assert fields == {"kept_messages": 1, "messages": [compacted[1]]}
    assert log.fields("other", first, None)["kept_messages"] == 0  # per node


@pytest.mark.parametrize("name", FIXTURES)
def test_the_golden_fixtures_export_one_record_per_node(name: str):
    roots = load_all(fixture_path(name))
    records = list(chat_records(roots))
    assert len(records) == sum(len(list(r.walk())) for r in roots)
    for record, node in zip(records, [n for r in roots for n in r.walk()], strict=True):
        assert record["run_id"] == node.run_id and record["depth"] == node.depth
        replies = [e.data["response"] for e in node.lm_calls
                   if e.data.get("purpose") in ("turn", "extract") and "response" in e.data]
        said = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
        assert said == replies
        assert record["messages"][0]["role"] in ("system", "user")


def test_fixtures_made_by_this_engine_export_exactly(tmp_path: Path):
    spec = importlib.util.spec_from_file_location("make_trace_fixtures", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for path in module.make(tmp_path):
        records = list(chat_records(load_all(path)))
        assert records and all(r["exact"] for r in records), path.name
        for record in records:
            assert record["messages"][0]["role"] == "system"
            assert record["messages"][-1]["role"] == "assistant"


def test_a_reconstruction_pairs_replies_with_their_outputs(tmp_path: Path):
    # a trace from before turns recorded their messages: the fixture without them
    old = tmp_path / "old.jsonl"
    lines = []
    for line in fixture_path("error").read_text().splitlines():
        event = json.loads(line)
        for key in ("messages", "kept_messages"):
            event.get("data", {}).pop(key, None)
        lines.append(json.dumps(event))
    old.write_text("\n".join(lines) + "\n")
    (root,) = load_all(old)
    messages, exact = conversation(root)
    assert exact is False
    assert messages[0] == {"role": "user", "content": root.question or
                           "(the input is in `context`)"}
    roles = [m["role"] for m in messages]
    assert roles == ["user", *["assistant", "user"] * (len(roles) // 2 - 1), "assistant"]
    blocks = root.code_executions
    assert blocks[0].data["code"] in messages[2]["content"]


def test_bench_results_give_the_run_its_score(tmp_path: Path):
    path, _ = _recorded_run(tmp_path)
    results = tmp_path / "results.jsonl"
    rows = [{"id": "t-1", "task": "count", "method": "rlm", "question": "Count it.",
             "score": 1.0},
            {"id": "t-1", "task": "count", "method": "base", "question": "Count it.",
             "score": 0.0},
            {"id": "t-2", "task": "count", "method": "rlm", "question": "Other.",
             "score": 0.5}]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "sft.jsonl"
    run = CliRunner().invoke(cli, ["trace", "export", str(path), "--results", str(results),
                                   "-o", str(out)])
    assert run.exit_code == 0, run.output
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["outcome"]["score"] == 1.0 and record["outcome"]["instance_id"] == "t-1"
    base = CliRunner().invoke(cli, ["trace", "export", str(path), "--results", str(results),
                                    "--method", "base"])
    assert json.loads(base.output)["outcome"]["score"] == 0.0


def test_the_command_writes_jsonl_to_stdout_by_default():
    run = CliRunner().invoke(cli, ["trace", "export", str(fixture_path("session"))])
    assert run.exit_code == 0, run.output
    records = [json.loads(line) for line in run.output.splitlines()]
    assert [r["run"] for r in records] == [0, 1]
    assert "score" not in records[0]["outcome"]
    bad = CliRunner().invoke(cli, ["trace", "export", str(fixture_path("tree")),
                                   "--format", "parquet"])
    assert bad.exit_code != 0
