"""The web viewer in a real headless Chromium: the tree, a node's turns, search, follow."""

from __future__ import annotations

import json
import time

import pytest

from rlm.trace import TraceNode, load, load_all
from rlm.trace.fixtures import fixture_path
from rlm.trace.web import TraceServer, render_html

pytestmark = pytest.mark.slow


def _figures(node: TraceNode) -> dict[str, str]:
    """The row the viewer should show for ``node``, computed here from ``rlm.trace``."""
    tokens = sum(u.input_tokens + u.output_tokens for u in node.usage.values())
    return {"depth": str(node.depth), "model": node.start.data["backend"]["model"],
            "status": node.stop_reason, "iter": str(node.iterations),
            "tokens": f"{tokens:,}", "cost": f"${node.cost_usd:.4f}",
            "time": f"{node.elapsed_s:.2f}s"}


def _open(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-loaded=true]")


@pytest.fixture
def tree_page(page):
    with TraceServer(fixture_path("tree")) as server:
        _open(page, server.url)
        yield page


def test_every_node_is_listed_with_its_figures(tree_page):
    tree = load(fixture_path("tree"))
    nodes = list(tree.walk())
    assert max(n.depth for n in nodes) == 3 and len(nodes) == 5
    assert tree_page.locator(".row.node").count() == len(nodes)
    for node in nodes:
        row = tree_page.locator(f'.row.node[data-run-id="{node.run_id}"]')
        shown = {key: row.locator(f".c-{key}").inner_text() for key in _figures(node)}
        assert shown == _figures(node), node.question
        assert node.question in row.locator(".c-name").inner_text()


def test_collapse_expand_and_read_a_nodes_code_and_output(tree_page):
    tree = load(fixture_path("tree"))
    tree_page.click(f'[data-toggle="{tree.run_id}"]')
    assert tree_page.locator(".row.node").count() == 1
    tree_page.click(f'[data-toggle="{tree.run_id}"]')
    assert tree_page.locator(".row.node").count() == 5

    south = next(n for n in tree.walk() if n.question == "survey south")
    tree_page.click(f'.row.node[data-run-id="{south.run_id}"]')
    detail = tree_page.locator("#detail-body")
    failing, answering = south.code_executions
    assert answering.data["final"]["text"] == "south is 204"
    assert "ZeroDivisionError" in failing.data["error"]
    turn1 = detail.locator(f"#turn-{south.run_id}-1")
    assert failing.data["code"] in turn1.locator(".code-exec pre").inner_text()
    assert "ZeroDivisionError" in turn1.locator("pre.error").inner_text()
    assert "south is 204" in detail.locator(f"#turn-{south.run_id}-2 pre.final").inner_text()
    # the root's first turn: its code's output, and links to the two children it started
    tree_page.click(f'.row.node[data-run-id="{tree.run_id}"]')
    stdout = tree.code_executions[0].data["stdout"].strip()
    assert detail.locator(f"#turn-{tree.run_id}-1 pre.stdout").inner_text().strip() == stdout
    assert detail.locator(".child-link").all_inner_texts() == ["d1 survey north",
                                                               "d1 survey south"]
    assert detail.locator(".tok-kw, .tok-fn, .tok-str").count() > 0  # code is highlighted


def test_search_finds_every_event_and_opens_the_hit(tree_page):
    tree = load(fixture_path("tree"))
    expected = [e for n in tree.walk() for e in n.events
                if any("leaf says y" in str(e.data.get(f, "")).lower()
                       for f in ("response", "stdout", "code", "prompt"))]
    tree_page.fill("#search", "leaf says Y")
    tree_page.wait_for_selector("#search-results:not([hidden])")
    hits = tree_page.locator("#hits li")
    assert hits.count() == len(expected) > 3
    deepest = next(n for n in tree.walk() if n.depth == 3)
    deepest_hit = hits.filter(has_text="d3 go deepest").first
    deepest_hit.click()
    assert tree_page.locator(".row.node.selected").get_attribute("data-run-id") == \
        deepest.run_id
    assert tree_page.locator(".flash").count() == 1


def test_timeline_shows_every_node_and_the_parallel_batches(tree_page):
    tree = load(fixture_path("tree"))
    assert tree_page.locator(".tl-row").count() == 5
    root_row = tree_page.locator(f'.tl-row[data-run-id="{tree.run_id}"]')
    assert root_row.locator(".tl-batch").count() == 1  # rlm_query_batched of 2 children
    deepest = next(n for n in tree.walk() if n.depth == 3)
    row = tree_page.locator(f'.tl-row[data-run-id="{deepest.run_id}"]')
    assert row.locator(".tl-call.sub").count() == 3  # its llm_query_batched(3)
    # the two children ran in parallel: their bars overlap in time
    north, south = tree.children
    assert north.start.ts < south.end.ts and south.start.ts < north.end.ts


def test_the_answer_links_to_its_evidence(tree_page):
    tree = load(fixture_path("tree"))
    assert tree_page.inner_text("#final-answer") == tree.response
    final = next(e for e in tree.events if e.type == "final")
    linked = [ev for ev in final.data["evidence"] if ev["iteration"] > 0]  # 0: the question
    links = tree_page.locator(".evidence-link")
    assert links.count() == len(linked) == 2
    links.first.click()  # the code of turn 2 that computed the answer
    flashed = tree_page.locator(".flash")
    assert "FINAL('north+south: '" in flashed.inner_text()


def test_budget_chart_shows_spending_against_the_limit(page):
    budget = load(fixture_path("budget"))
    with TraceServer(fixture_path("budget")) as server:
        _open(page, server.url)
        body = page.inner_text("#budget-body")
    assert f"cost: ${budget.cost_usd:.4f}" in body
    assert "limit $0.0035" in body and "max_budget=0.0035" in body
    assert page.locator(".row.node .c-status").inner_text() == "budget"


def test_a_session_file_shows_each_run(page):
    first, second = load_all(fixture_path("session"))
    with TraceServer(fixture_path("session")) as server:
        _open(page, server.url)
        assert page.inner_text("#final-answer") == second.response  # the newest run
        page.select_option("#run-select", "0")
        assert page.inner_text("#final-answer") == first.response


def test_follow_a_growing_trace(page, tmp_path):
    lines = fixture_path("tree").read_text().splitlines(keepends=True)
    target = tmp_path / "growing.jsonl"
    target.write_text("".join(lines[:10]))
    with TraceServer(target, follow=True, interval_ms=100) as server:
        _open(page, server.url)
        shown = page.locator(".row.node").count()
        partial = len({json.loads(line)["run_id"] for line in lines[:10]})
        assert shown == partial < 5
        assert "Running" in page.inner_text("#answer-body")
        with target.open("a") as handle:
            handle.write(lines[10][: len(lines[10]) // 2])  # half a line: not read yet
            handle.flush()
            time.sleep(0.3)
            handle.writelines([lines[10][len(lines[10]) // 2:], *lines[11:]])
        page.wait_for_function("document.querySelectorAll('.row.node').length === 5")
        page.wait_for_selector("#final-answer")
        assert page.inner_text("#final-answer") == load(target).response
        assert page.inner_text("#status").startswith(f"{len(lines)} events")


def test_the_html_file_is_self_contained(page, tmp_path):
    out = tmp_path / "run.html"
    out.write_text(render_html(fixture_path("tree")))
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    _open(page, out.as_uri())
    assert requested == [out.as_uri()]  # no CSS, JS or data fetched from anywhere
    assert page.locator(".row.node").count() == 5


def test_a_large_trace_opens_quickly(page, tmp_path):
    """1,000 nodes and 10,000 events (synthetic): the page is drawn in under 2 s here."""
    path = tmp_path / "large.jsonl"
    events, seq, t0 = [], 0, 1_800_000_000.0

    def add(kind: str, run_id: str, parent: str | None, depth: int, iteration: int,
            data: dict) -> None:
        nonlocal seq
        seq += 1
        events.append({"schema_version": "1.0", "type": kind, "run_id": run_id,
                       "parent_run_id": parent, "depth": depth, "iteration": iteration,
                       "seq": seq, "ts": t0 + seq * 0.001, "data": data})

    for i in range(1000):
        run_id, parent = f"n{i:04d}", (None if i == 0 else f"n{(i - 1) // 10:04d}")
        depth = 0 if i == 0 else 1 + (i > 10) + (i > 110)
        add("run_start", run_id, parent, depth, 0, {"question": f"q{i}", "context_type": "str",
            "limits": {}, "backend": {"model": "m"}})
        for turn in (1, 2, 3, 4):
            add("lm_call", run_id, parent, depth, turn, {
                "purpose": "turn", "model": "m", "latency_s": 0.0005, "input_tokens": 100,
                "output_tokens": 10, "cost_usd": 0.0001, "response": f"```repl\nx = {turn}\n```"})
            add("code_exec", run_id, parent, depth, turn, {"code": f"x = {turn}",
                "stdout": "ok " * 20, "stderr": "", "error": None, "final": None})
        add("run_end", run_id, parent, depth, 4, {"elapsed_s": 0.01, "iterations": 4})
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    assert len(events) == 10_000 and len(list(load(path).walk())) == 1000
    with TraceServer(path) as server:
        started = time.perf_counter()
        _open(page, server.url)
        elapsed = time.perf_counter() - started
    assert page.locator(".row.node").count() == 1000
    print(f"1,000 nodes / 10,000 events drawn in {elapsed:.2f}s")
    assert elapsed < 2.0
