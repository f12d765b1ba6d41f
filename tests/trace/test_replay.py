"""Replay: a recorded run served its own replies again, and where a changed run departs."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rlm import RLM
from rlm.backends.scripted import ScriptedBackend
from rlm.cli import cli
from rlm.trace import load, load_all
from rlm.trace.fixtures import fixture_path
from rlm.trace.replay import Recording, compare

#: The input the fixture runs were made with (scripts/make_trace_fixtures.py).
TEXT = "the quick brown fox jumps over the lazy dog " * 6


def _replay(tree, context, **options):
    recording = Recording(tree)
    with RLM(backend=ScriptedBackend(recording.responses), **options) as model:
        result = model.completion(tree.question, context=context)
    return recording, result


@pytest.mark.parametrize("name", ["tree", "batch", "budget", "error"])
def test_a_replay_of_the_same_input_matches_its_recording(name):
    recorded = load(fixture_path(name))
    limits = recorded.start.data["limits"]
    recording, result = _replay(recorded, TEXT, max_depth=limits["max_depth"])
    assert compare(recorded, result.trace) is None and recording.missing == []
    assert (result.response, result.stop_reason) == (recorded.response, recorded.stop_reason)
    assert len(list(result.trace.walk())) == len(list(recorded.walk()))
    assert result.cost_usd == 0.0  # no model was paid


def test_a_changed_input_is_reported_at_the_first_block_that_differs():
    recorded = load(fixture_path("tree"))
    _, result = _replay(recorded, TEXT[:100], max_depth=4)
    divergence = compare(recorded, result.trace)
    assert divergence is not None and divergence.kind == "output"
    # north's chain prints only a fixed answer; south's len(context) is the first change
    assert divergence.where == "depth 1 «survey south», turn 2"
    assert divergence.field == "final"
    assert divergence.recorded["text"] == "south is 204"
    assert divergence.replayed["text"] == "south is 40"


def test_a_call_the_recording_lacks_is_reported(tmp_path):
    lines = [json.loads(line) for line in fixture_path("batch").read_text().splitlines()]
    for line in lines:  # the recording has other prompts than the code will send
        if line["data"].get("purpose") == "llm_query":
            line["data"]["prompt"] = "another prompt"
    path = tmp_path / "edited.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    recorded = load(path)
    recording, result = _replay(recorded, TEXT, max_depth=1)
    assert [m.kind for m in recording.missing] == ["unrecorded"] * 4
    assert "summarise part 0" in recording.missing[0].replayed
    assert compare(recorded, result.trace) is not None  # the failed calls show in the output


def test_a_missing_child_is_reported():
    recorded = load(fixture_path("tree"))
    new = load(fixture_path("tree"))
    new.children.pop()
    divergence = compare(recorded, new)
    assert divergence.kind == "missing_node" and divergence.recorded == "survey south"


def test_cli_replay_matches_and_reports(tmp_path):
    runner = CliRunner()
    context = tmp_path / "input.txt"
    context.write_text(TEXT)
    ok = runner.invoke(cli, ["replay", str(fixture_path("tree")), "--context", str(context)])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.startswith("replay matches the recording (5 nodes)")
    context.write_text(TEXT[:100])
    bad = runner.invoke(cli, ["replay", str(fixture_path("tree")), "--context", str(context),
                              "--json"])
    assert bad.exit_code == 1
    outcome = json.loads(bad.stdout)
    assert outcome["diverged"] and outcome["divergence"]["where"].startswith("depth 1")


def test_cli_replay_of_a_session_turn_shows_the_state_it_lacks(tmp_path):
    """The second call of a session used a variable of the first: replayed alone, it fails."""
    first, second = load_all(fixture_path("session"))
    context = tmp_path / "input.txt"
    context.write_text("gamma")
    result = CliRunner().invoke(cli, ["replay", str(fixture_path("session")), "--context",
                                      str(context), "--run", "1"])
    assert result.exit_code == 1 and "NameError: name 'total' is not defined" in result.stdout
    bad = CliRunner().invoke(cli, ["replay", str(fixture_path("session")), "--run", "5"])
    assert bad.exit_code == 2 and "holds 2 runs" in bad.stderr
    assert second.response == "kept 10 then 5" and first.response == "first: 10"
