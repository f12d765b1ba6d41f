"""The versioned trace format: what ``load`` accepts, refuses and says (golden fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlm import RLM
from rlm.errors import RLMError
from rlm.trace import SCHEMA_VERSION, load, load_all
from rlm.trace.fixtures import FIXTURES, fixture_path
from rlm.trace.schema import parse_version
from tests.conftest import repl


def _lines(name: str) -> list[dict]:
    return [json.loads(line) for line in fixture_path(name).read_text().splitlines()]


def _write(path: Path, events: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def test_every_event_written_carries_the_schema_version(tmp_path):
    path = tmp_path / "run.jsonl"
    RLM(backend="scripted", backend_kwargs={"responses": [repl("FINAL(1)")]},
        trace=path).completion("x")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines and {line["schema_version"] for line in lines} == {SCHEMA_VERSION}
    assert load(path).events[0].schema_version == SCHEMA_VERSION


@pytest.mark.parametrize("name", FIXTURES)
def test_every_fixture_loads_strictly(name):
    roots = load_all(fixture_path(name))
    assert roots and all(node.end is not None for root in roots for node in root.walk())


def test_the_fixtures_are_what_their_names_say():
    tree = load(fixture_path("tree"))
    assert max(node.depth for node in tree.walk()) == 3
    assert len(list(tree.walk())) == 5
    assert any(e.data.get("op") == "rlm_query_batched" for e in tree.events)
    assert any(e.data.get("error") for n in tree.walk() for e in n.code_executions)
    batch = load(fixture_path("batch"))
    assert [e.data["count"] for e in batch.events if e.type == "subcall_end"] == [4]
    assert load(fixture_path("budget")).stop_reason == "budget"
    error = load(fixture_path("error"))
    assert any("error" in e.data for e in error.lm_calls) and error.stop_reason == "final"
    first, second = load_all(fixture_path("session"))
    assert first.response == "first: 10" and second.response == "kept 10 then 5"


def test_a_trace_without_a_version_is_read_as_1_0(tmp_path):
    events = _lines("budget")
    for event in events:
        del event["schema_version"]
    assert load(_write(tmp_path / "old.jsonl", events)).stop_reason == "budget"


def test_a_newer_major_version_is_refused_with_a_clear_message(tmp_path):
    events = _lines("budget")
    events[0]["schema_version"] = "2.0"
    with pytest.raises(RLMError, match=r"old.jsonl:1: .*schema version 2.0, newer than "
                                       r"this rlm reads \(1.x\); upgrade rlm"):
        load(_write(tmp_path / "old.jsonl", events))


def test_a_newer_minor_version_may_add_fields_and_event_types(tmp_path):
    events = _lines("tree")
    minor = parse_version(SCHEMA_VERSION)[1] + 1
    for event in events:
        event["schema_version"] = f"1.{minor}"
        event["span_id"] = "abc"  # a new top-level field
        event["data"]["new_field"] = [1, 2]
    events.insert(3, {**events[2], "type": "cache_hit", "seq": 3})
    tree = load(_write(tmp_path / "newer.jsonl", events))
    assert len(list(tree.walk())) == 5 and "cache_hit" in [e.type for e in tree.events]


@pytest.mark.parametrize(("change", "message"), [
    (lambda e: e.update(span_id="abc"), "unknown field 'span_id'"),
    (lambda e: e.update(type="cache_hit"), "unknown event type 'cache_hit'"),
    (lambda e: e.update(seq="3"), "'seq' must be int"),
    (lambda e: e.update(depth=True), "'depth' must be int"),
    (lambda e: e.pop("run_id"), "no 'run_id'"),
    (lambda e: e.update(schema_version="one"), "schema_version must be 'MAJOR.MINOR'"),
    (lambda e: e["data"].pop("purpose"), "lm_call event needs data.purpose"),
    (lambda e: e["data"].update(input_tokens="9"), "data.input_tokens must be int"),
])
def test_what_this_version_knows_is_checked(tmp_path, change, message):
    events = _lines("batch")
    change(events[1])  # an lm_call
    with pytest.raises(RLMError, match=rf"bad.jsonl:2: .*{message}"):
        load(_write(tmp_path / "bad.jsonl", events))


def test_a_line_the_writer_could_not_serialise_still_loads(tmp_path):
    events = _lines("batch")
    events[1]["data"] = {"trace_error": "event not serialisable: TypeError: ..."}
    assert load(_write(tmp_path / "t.jsonl", events)).response is not None


def test_an_unknown_fixture_name_says_which_exist():
    with pytest.raises(ValueError, match="batch, budget"):
        fixture_path("nope")
