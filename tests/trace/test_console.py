"""The rich call-tree view: live on a terminal, plain lines elsewhere, and ``render_tree``."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from rlm import RLM
from rlm.trace import JsonlSink, TraceEvent, load
from rlm.trace.console import ConsoleSink, print_tree, render_tree
from tests.conftest import repl


def run_nested(replies, sink=None, **kwargs):
    return RLM(backend="scripted", backend_kwargs={"responses": replies}, max_depth=2,
               trace=sink, **kwargs).completion("hello")


def test_live_tree_shows_the_nested_child_and_answers(screen, nested_replies):
    shown = screen(terminal=True)
    sink = ConsoleSink(console=shown.console)
    assert sink.live_mode
    result = run_nested(nested_replies, sink)
    assert result.response == "root done: child answer xyz"
    lines = shown.text().splitlines()
    root = next(i for i, line in enumerate(lines) if "d0 input: str, len 5" in line)
    child = next(i for i, line in enumerate(lines) if "d1 «what is inside?»" in line)
    assert root < child
    assert lines[child].startswith("├── ✓ d1")  # nested one level under the root
    assert any(line.startswith("│   ├── code ZeroDivisionError, final") for line in lines)
    assert any(line.startswith("│   └── → child answer xyz  (final)") for line in lines)
    assert "└── → root done: child answer xyz  (final)" in lines
    assert "├── llm_query: 3 calls" in lines  # counted, not one line each
    assert "iter 2 · 5 LM calls (3 sub)" in lines[root]


def test_plain_lines_when_not_a_terminal(screen, nested_replies):
    shown = screen(terminal=False)
    sink = ConsoleSink(console=shown.console)
    assert not sink.live_mode
    result = run_nested(nested_replies, sink)
    lines = shown.text().splitlines()
    assert any("d1" in line and "start «what is inside?»" in line for line in lines)
    assert any("d1" in line and "code ZeroDivisionError" in line for line in lines)
    assert any("d1" in line and "→ child answer xyz  (final)" in line for line in lines)
    assert any("llm_query_batched ×3" in line for line in lines)
    assert not any("llm_query:" in line for line in lines)  # no line per plain sub-call
    assert lines[-1].startswith("rlm d0") and "→ root done: child answer xyz" in lines[-1]
    # progress lines never leak into what the model's code printed
    for node in result.trace.walk():
        for run in node.code_executions:
            assert "rlm " not in run.data["stderr"] + run.data["stdout"]


def test_verbose_rlm_draws_on_stderr(capsys, nested_replies):
    result = run_nested(nested_replies, verbose=True)
    err = capsys.readouterr().err
    assert "«what is inside?»" in err and "root done: child answer xyz" in err
    for node in result.trace.walk():
        for run in node.code_executions:
            assert "«what is inside?»" not in run.data["stderr"]


def test_many_finished_children_fold_in_the_live_view(tmp_path, screen):
    code = "rs = rlm_query_batched([f'q{i}' for i in range(8)])\nFINAL(len(rs))"

    def reply(messages, depth):
        return repl(code) if depth == 0 else repl("FINAL('leaf')")

    path = tmp_path / "t.jsonl"
    RLM(backend="scripted", backend_kwargs={"responses": reply}, max_depth=2,
        trace=path).completion("x")
    node = load(path)
    assert len(node.children) == 8
    shown = screen(terminal=False)
    shown.console.print(render_tree(node, max_finished_children=5))
    folded = shown.text()
    assert "… 3 finished child runs" in folded
    assert folded.count("→ leaf") == 5
    assert "└── → 8  (final)" in folded


def test_print_tree_of_a_saved_trace(tmp_path, nested_replies, screen):
    path = tmp_path / "t.jsonl"
    sink = JsonlSink(path)
    run_nested(nested_replies, sink)
    sink.close()
    shown = screen(terminal=False)
    print_tree(load(path), file=shown.buffer)
    text = shown.text()
    assert "d1 «what is inside?»" in text and "→ root done: child answer xyz" in text


def test_emit_is_thread_safe_and_close_is_idempotent(screen):
    shown = screen(terminal=True)
    sink = ConsoleSink(console=shown.console, transient=False)

    def node_events(index: int) -> None:
        run_id = f"child{index:02d}"
        for seq, kind in enumerate(("run_start", "lm_call", "code_exec", "final", "run_end")):
            data = {"question": f"part {index}"} if kind == "run_start" else {}
            if kind == "lm_call":
                data = {"purpose": "llm_query", "input_tokens": 10, "output_tokens": 2}
            if kind == "final":
                data = {"response": f"answer {index}", "stop_reason": "final"}
            sink.emit(TraceEvent(kind, run_id, "root", 1, 1, seq, time.time(), data))

    sink.emit(TraceEvent("run_start", "root", None, 0, 0, 0, time.time(), {"question": "q"}))
    threads = [threading.Thread(target=node_events, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sink.close()
    sink.close()
    sink.emit(TraceEvent("run_end", "root", None, 0, 0, 99, time.time(), {}))  # ignored
    text = shown.text()
    assert all(f"answer {i}" in text for i in range(16))


def test_import_rlm_does_not_import_rich():
    code = ("import sys, rlm, rlm.cli, rlm.trace\n"
            "assert 'rich' not in sys.modules, sorted(m for m in sys.modules if 'rich' in m)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
