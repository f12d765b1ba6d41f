"""The runner end to end on the scripted backend: every method, JSONL rows, resume."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from rlm.backends.scripted import ScriptedBackend
from rlm.bench.methods import METHODS, MethodConfig, run_method
from rlm.bench.runner import read_rows, row_key, run
from rlm.bench.tasks import TASKS, make_instance, make_instances
from rlm.errors import BackendError, ConfigError
from tests.bench.oracle import oracle
from tests.conftest import repl

SMALL = 2**13
#: A window smaller than the context, so base and bm25 see only part of it.
CONFIG = MethodConfig(window_tokens=4096)


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_method_on_every_task_with_a_perfect_model(tmp_path, perfect_model):
    instances = [make_instance(task, SMALL) for task in TASKS]
    out = tmp_path / "results.jsonl"
    rows = run(list(TASKS), [SMALL], list(METHODS), perfect_model(instances), out_path=out,
               config=CONFIG, progress=False)
    assert len(rows) == len(TASKS) * len(METHODS) == len(lines(out))
    for row in rows:
        assert row["error"] is None, row
        assert row["model"] == "perfect" and row["backend"] == "scripted"
        for name in ("input_tokens", "output_tokens", "cost_usd", "latency_s", "calls"):
            assert row[name] >= 0, name
        assert row["calls"] >= 1 and row["input_tokens"] > 0
        if row["method"].startswith("rlm"):
            assert row["score"] == 1.0 and row["stop_reason"] == "final"
    niah = {r["method"]: r for r in rows if r["task"] == "niah"}
    instance = instances[0]
    # base sees only the head of the context: it is right only if the needle is there
    seen = niah["base"]["extra"]["seen_fraction"]
    needle_at = instance.context.index("special magic number") / len(instance.context)
    assert seen < 1.0
    assert niah["base"]["score"] == (1.0 if needle_at < seen else 0.0)
    assert niah["bm25"]["score"] == 1.0 and niah["bm25"]["extra"]["retrieved"] >= 1
    assert niah["summarize"]["score"] == 1.0 and niah["summarize"]["calls"] >= 3


def test_resume_after_an_interruption_writes_no_duplicates(tmp_path, perfect_model):
    instances = make_instances("niah", SMALL, 4)
    out = tmp_path / "results.jsonl"
    perfect = perfect_model(instances)
    reply = oracle(instances)
    calls = 0

    def dies_on_the_third_call(messages, depth):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        return reply(messages, depth)

    with pytest.raises(KeyboardInterrupt):
        run(["niah"], [SMALL], ["base"], ScriptedBackend(dies_on_the_third_call, model="perfect"),
            instances=4, out_path=out, config=CONFIG, progress=False)
    assert len(lines(out)) == 2
    with out.open("a") as handle:  # and the process died in the middle of a line
        handle.write('{"id": "niah-8192-s2", "method": "ba')

    rows = run(["niah"], [SMALL], ["base", "rlm"], perfect, instances=4, out_path=out,
               config=CONFIG, progress=False)
    assert len(rows) == 8
    stored = read_rows(out)
    assert len(stored) == 8
    assert Counter(row_key(r) for r in stored).most_common(1)[0][1] == 1
    assert out.read_text().count("\n") == 9  # the cut line stays, alone on its line

    again = run(["niah"], [SMALL], ["base", "rlm"], perfect, instances=4, out_path=out,
                config=CONFIG, progress=False)
    assert len(again) == 8 and len(read_rows(out)) == 8


def test_a_failing_method_is_recorded_and_retried_on_request(tmp_path, scripted):
    def refuse(messages, depth):
        raise BackendError("the provider is down")

    out = tmp_path / "results.jsonl"
    rows = run(["niah"], [SMALL], ["base"], scripted(refuse), out_path=out, progress=False)
    assert rows[0]["error"] == "BackendError: the provider is down"
    assert rows[0]["score"] == 0.0 and rows[0]["prediction"] is None
    run(["niah"], [SMALL], ["base"], scripted(refuse), out_path=out, progress=False)
    assert len(read_rows(out)) == 1
    answer = make_instance("niah", SMALL).answer
    rows = run(["niah"], [SMALL], ["base"], scripted(lambda m, d: answer), out_path=out,
               progress=False, retry_errors=True)
    assert rows[0]["error"] is None and rows[0]["score"] == 1.0
    assert len(read_rows(out)) == 2


def test_concurrent_runs_give_the_same_scores(tmp_path, perfect_model):
    instances = [i for t in ("niah", "oolong") for i in make_instances(t, SMALL, 3)]
    one = run(["niah", "oolong"], [SMALL], ["base", "rlm"], perfect_model(instances),
              instances=3, out_path=tmp_path / "one.jsonl", config=CONFIG, progress=False)
    many = run(["niah", "oolong"], [SMALL], ["base", "rlm"], perfect_model(instances),
               instances=3, out_path=tmp_path / "many.jsonl", config=CONFIG, concurrency=3,
               progress=False)
    scores = {row_key(r): r["score"] for r in one}
    assert scores == {row_key(r): r["score"] for r in many}


def test_unknown_names_are_config_errors(tmp_path, scripted):
    with pytest.raises(ConfigError, match="unknown task"):
        run(["nope"], [SMALL], ["base"], scripted(["x"]), out_path=tmp_path / "r.jsonl")
    with pytest.raises(ConfigError, match="unknown method"):
        run(["niah"], [SMALL], ["magic"], scripted(["x"]), out_path=tmp_path / "r.jsonl")


def test_rlm_no_sub_offers_and_makes_no_sub_calls(scripted):
    backend = scripted([
        repl("try:\n    llm_query('hi')\nexcept Exception as exc:\n    print('refused:', exc)"),
        repl("FINAL('done')"),
    ])
    instance = make_instance("niah", SMALL)
    result = run_method("rlm-no-sub", instance, backend, MethodConfig())
    assert result.answer == "done"
    assert result.extra["sub_calls"] == 0 and result.usage.calls == 2 == len(backend.calls)
    system = backend.calls[0].messages[0]["content"]
    assert "llm_query(prompt) -> str" not in system
    assert "refused: SubCallsDisabled" in backend.calls[1].messages[-1]["content"]


def test_rlm_counts_its_sub_calls(scripted):
    backend = scripted([repl("x = llm_query('what?')"), "sub answer", repl("FINAL(x)")])
    result = run_method("rlm", make_instance("niah", SMALL), backend, MethodConfig())
    assert result.answer == "sub answer"
    assert result.extra["sub_calls"] == 1 and result.usage.calls == 3


def test_base_cuts_further_when_the_backend_refuses_a_long_prompt(scripted):
    sizes = []

    def small_window(messages, depth):
        sizes.append(len(messages[0]["content"]))
        if sizes[-1] > 6_000:
            raise BackendError("the prompt does not fit the local model's window")
        return "42"

    result = run_method("base", make_instance("niah", SMALL), scripted(small_window),
                        MethodConfig(window_tokens=4096))
    assert result.answer == "42" and result.usage.calls == 1
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] <= 6_000 < sizes[0]


def test_the_harness_uses_only_the_public_api():
    import ast
    from pathlib import Path

    import rlm.bench

    for path in Path(rlm.bench.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlm"):
                assert node.module in ("rlm", "rlm.registry") or node.module.startswith(
                    "rlm.bench"), f"{path.name} imports {node.module}"
