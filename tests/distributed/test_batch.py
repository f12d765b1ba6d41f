"""``RLM.batch(..., executor="ray")``: many completions across the nodes, in order."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import ray

from rlm import RLM
from tests.distributed.conftest import wait_idle

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def block(code: str) -> str:
    return f"```repl\n{code}\n```"


def answer_with_item(messages, depth):
    """Each completion answers with the number in its question ("item 7" -> "7 done")."""
    last = messages[-1]["content"]
    if "Question: item" in last:
        number = last.split("Question: item ")[1].split()[0]
        if number == "dies":
            os.kill(os.getpid(), 9)  # its worker dies while the call holds room
        return block(f"FINAL('{number} done ' + str(len(context)))")
    return block("FINAL('?')")


def make(address: str, **kwargs) -> RLM:
    return RLM(backend="scripted",
               backend_kwargs={"responses": answer_with_item, "cost_per_call": 0.125},
               executor="ray", executor_kwargs={"address": address}, **kwargs)


def test_a_batch_of_50_spreads_over_both_nodes_and_keeps_its_order(address, nodes):
    prompts = [f"item {i}" for i in range(50)]
    results = make(address).batch(prompts, ["c" * i for i in range(50)])
    assert [r.response for r in results] == [f"{i} done {i}" for i in range(50)]
    assert {r.placement["node"] for r in results} == set(nodes.values())
    assert all(r.stop_reason == "final" and r.cost_usd == 0.125 for r in results)


def test_a_batch_budget_holds_across_nodes(address):
    results = make(address).batch([f"item {i}" for i in range(60)], batch_budget=40 * 0.125)
    assert sum(r.cost_usd for r in results) == 5.0
    assert sum(r.cost_usd > 0 for r in results) == 40  # 40 calls, never 41
    assert sum(r.stop_reason == "final" for r in results) == 40
    assert {r.stop_reason for r in results} == {"final", "budget"}


def test_a_worker_killed_mid_batch_fails_only_its_item_and_gives_back_its_room(address):
    """Nine calls fit the batch budget; the first item's worker dies holding room for one:
    all nine others finish only if that room came back."""
    prompts = ["item dies"] + [f"item {i}" for i in range(1, 10)]
    results = make(address).batch(prompts, ["c"] * 10, batch_budget=9 * 0.125,
                                  max_concurrency=1)
    assert results[0].stop_reason == "error", (results[0].response, results[0].placement)
    assert "died" in results[0].error
    assert [r.response for r in results[1:]] == [f"{i} done 1" for i in range(1, 10)]


def test_batch_items_are_failure_isolated_and_traced(address, tmp_path):
    rlm = make(address, trace=tmp_path)
    seen: list[int] = []
    results = rlm.batch(["item 1", "item 2"], ["a", "b"], on_result=lambda i, r: seen.append(i))
    assert sorted(seen) == [0, 1]
    for result in results:
        assert result.trace_path is not None and os.path.exists(result.trace_path)
        with open(result.trace_path) as file:
            text = file.read()
        assert result.run_id in text and '"type": "run_end"' in text


def test_a_large_context_is_put_once_for_every_item(address, monkeypatch):
    """8 items share one 1 GiB context: one ray.put, one copy in the object store."""
    puts: list[int] = []
    real_put = ray.put

    def counting_put(value, **kwargs):
        puts.append(len(value) if isinstance(value, str) else 0)
        return real_put(value, **kwargs)

    monkeypatch.setattr(ray, "put", counting_put)
    big = "x" * (1 << 30)
    results = make(address).batch([f"item {i}" for i in range(8)], [big] * 8,
                                  max_concurrency=4)
    assert [r.response for r in results] == [f"{i} done {1 << 30}" for i in range(8)]
    assert puts.count(1 << 30) == 1


DRIVER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    import ray
    from rlm import RLM
    def slow(messages, depth):
        time.sleep(120)
        return "never"
    rlm = RLM(backend="scripted", backend_kwargs={{"responses": slow}},
              executor="ray", executor_kwargs={{"address": {address!r}}})
    print("started", flush=True)
    rlm.batch(["a", "b", "c"])
""")


def test_a_driver_killed_mid_batch_leaves_no_task_running(address):
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    script = DRIVER.format(root=root, address=address)
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert driver.stdout is not None and driver.stdout.readline().strip() == "started"
    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0) >= ray.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, "the batch never started"
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=10)
    driver.stdout.close()
    wait_idle(30)


def stuck(messages, depth):
    time.sleep(60)
    return "never"


def test_cancel_stops_a_batch(address):
    rlm = RLM(backend="scripted", backend_kwargs={"responses": stuck},
              executor="ray", executor_kwargs={"address": address})
    threading.Timer(3.0, rlm.cancel).start()
    started = time.monotonic()
    results = rlm.batch(["a", "b", "c", "d", "e", "f"])
    assert time.monotonic() - started < 20
    assert {r.stop_reason for r in results} <= {"cancelled", "error"}
    wait_idle(15)


@pytest.mark.parametrize("bad", [["a"], "one string"])
def test_bad_batch_input_is_refused_clearly(address, bad):
    from rlm.errors import ConfigError

    with pytest.raises(ConfigError):
        make(address).batch(bad, [] if isinstance(bad, list) else None)
