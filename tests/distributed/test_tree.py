"""Child RLMs as Ray tasks (``executor="ray"``): the same tree, the same totals, one ledger."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
import ray

from rlm import RLM
from tests.distributed.conftest import wait_idle

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def block(code: str) -> str:
    return f"```repl\n{code}\n```"


def three_levels(messages, depth):
    """Root fans out to two children; each asks one grandchild; answers go back up."""
    last = messages[-1]["content"]
    if "Question: top" in last:
        return block("parts = rlm_query_batched(['mid a', 'mid b'], "
                     "contexts=[context[:50], context[50:]])\nprint(parts)")
    if "Question: mid" in last:
        return block("d = rlm_query('leaf', context=context[:10])\nprint(d)")
    if "Question: leaf" in last:
        return block("FINAL('leaf ' + str(len(context)))")
    if depth == 0:
        return block("FINAL('top got ' + ' | '.join(parts))")
    return block("FINAL('mid got ' + d)")


def make(responses, address: str | None = None, **kwargs) -> RLM:
    backend_kwargs = {"responses": responses, "cost_per_call": 0.125,
                      **kwargs.pop("backend_kwargs", {})}
    executor = {} if address is None else {
        "executor": "ray", "executor_kwargs": {"address": address,
                                               **kwargs.pop("executor_kwargs", {})}}
    return RLM(backend="scripted", backend_kwargs=backend_kwargs, **executor, **kwargs)


def shape(node):
    """The tree as (depth, question, answer, children), children in question order."""
    return (node.depth, node.question, node.response,
            sorted(shape(c) for c in node.children))


def test_a_depth_3_tree_runs_remotely_with_the_same_answer_and_totals(address, tmp_path):
    local = make(three_levels, max_depth=3).completion("top", context="x" * 100)
    remote = make(three_levels, address, max_depth=3, trace=tmp_path / "run.jsonl"
                  ).completion("top", context="x" * 100)
    assert remote.response == local.response == "top got mid got leaf 10 | mid got leaf 10"
    assert remote.stop_reason == "final"
    assert remote.cost_usd == local.cost_usd == 8 * 0.125
    assert remote.usage == local.usage
    assert shape(remote.trace) == shape(local.trace)
    children = [n for n in remote.trace.walk() if n.depth > 0]
    assert len(children) == 4
    pids = {e.data["where"]["pid"] for n in children for e in n.events}
    assert os.getpid() not in pids and len(pids) >= 2
    assert all("where" not in e.data for e in remote.trace.events)  # the root ran here
    # One trace file, numbered in one sequence, every event of every node in it.
    lines = (tmp_path / "run.jsonl").read_text().splitlines()
    assert len(lines) == sum(len(n.events) for n in remote.trace.walk())
    seqs = [int(line.split('"seq": ')[1].split(",")[0]) for line in lines]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def fan_out(count: int):
    def reply(messages, depth):
        if depth == 0 and "Question: fan" in messages[-1]["content"]:
            return block(f"rs = rlm_query_batched(['leaf'] * {count})\nprint(len(rs))")
        if depth == 0:
            return block("FINAL('done')")
        return block("FINAL('leaf done')")
    return reply


@pytest.mark.parametrize("attempt", range(3))
def test_the_budget_is_exact_across_nodes(address, attempt):
    """A budget that fits 40 calls gets 40 (never 41), with 60 children on two nodes."""
    rlm = make(fan_out(60), address, max_depth=2, max_budget=40 * 0.125,
               max_concurrency=16, backend_kwargs={"latency_s": 0.02})
    result = rlm.completion("fan", context="c")
    calls = [e for n in result.trace.walk() for e in n.lm_calls]
    assert len(calls) == 40
    assert result.cost_usd == 5.0 and result.stop_reason == "budget"
    nodes = {e.data["where"]["node"] for n in result.trace.walk() if n.depth for e in n.events}
    assert len(nodes) == 2


def test_children_can_be_pinned_to_nodes_with_a_resource(address, nodes):
    rlm = make(three_levels, address, max_depth=3,
               executor_kwargs={"resources": {"rlm_model": 0.1}})
    result = rlm.completion("top", context="x" * 100)
    assert result.response.startswith("top got mid got leaf")
    placed = {e.data["where"]["node"] for n in result.trace.walk() if n.depth for e in n.events}
    assert placed == {nodes["worker"]}


def killer(messages, depth):
    last = messages[-1]["content"]
    if depth == 0 and "Question: go" in last:
        return block("rs = rlm_query_batched(['fine', 'die', 'fine too'])\nprint(rs)")
    if depth == 0:
        return block("FINAL(' / '.join(r[:200] for r in rs))")
    if "Question: die" in last:
        os.kill(os.getpid(), 9)  # the worker dies in the middle of an LM call
    return block("FINAL('ok')")


def test_a_worker_killed_mid_call_fails_only_its_child(address):
    result = make(killer, address, max_depth=2, max_budget=10.0).completion("go", context="c")
    parts = result.response.split(" / ")
    assert result.stop_reason == "final" and parts[0] == "ok" and parts[2] == "ok"
    assert (parts[1].startswith("QueryFailed") and "died" in result.trace.events[
        -1].data.get("response", "")) or "RemoteError" in parts[1] or "lost" in parts[1]
    # The dead child's reservation was given back: every call charged is in the trace.
    calls = [e for n in result.trace.walk() for e in n.lm_calls]
    assert result.cost_usd == pytest.approx(0.125 * len(calls))


def slow_children(messages, depth):
    if depth == 0 and "Question: slow" in messages[-1]["content"]:
        return block("rs = rlm_query_batched(['wait'] * 4)\nprint(rs)")
    if depth == 0:
        return block("FINAL('finished')")
    time.sleep(60)  # a child stuck inside its LM call
    return block("FINAL('late')")


def test_cancel_stops_every_node_and_leaves_no_task_running(address):
    rlm = make(slow_children, address, max_depth=2)
    timer = threading.Timer(3.0, rlm.cancel)
    timer.start()
    started = time.monotonic()
    result = rlm.completion("slow", context="c")
    took = time.monotonic() - started
    assert result.stop_reason == "cancelled"
    assert took < 20, took
    wait_idle(15)
