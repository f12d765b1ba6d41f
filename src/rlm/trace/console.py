"""The call tree drawn with rich: a live view on stderr (``ConsoleSink``) and ``render_tree``.

This is the only module of rlm that imports rich; ``import rlm`` never loads it (``RLM``
imports it lazily when ``verbose=True``).
"""

from __future__ import annotations

import contextvars
import re
import threading
import time
from typing import IO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text
from rich.tree import Tree

from rlm.trace.events import TraceEvent
from rlm.trace.tree import TraceNode

__all__ = ["ConsoleSink", "print_tree", "render_tree"]

QUESTION_CHARS = 60
ANSWER_CHARS = 80
#: How many code-execution statuses a node shows (the latest ones).
CODE_MARKS = 8
#: In the live view, how many finished children a node keeps on screen (running ones stay).
LIVE_FINISHED_CHILDREN = 5

_ERROR_NAME = re.compile(r"([A-Za-z_][\w.]*)(?::|$)")


# -- formatting helpers --------------------------------------------------------------------
def _shorten(text: object, limit: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _tokens(count: int) -> str:
    if count >= 1_000_000:
        return f"{count / 1_000_000:.1f}M"
    if count >= 1_000:
        return f"{count / 1_000:.1f}k"
    return str(count)


def _cost(usd: float) -> str:
    return f"${usd:.2f}" if usd >= 1 else f"${usd:.4f}"


def _seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds >= 0.1 else f"{seconds:.2f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def _error_type(error: object) -> str:
    """``"Traceback ...\\nZeroDivisionError: division by zero"`` -> ``"ZeroDivisionError"``."""
    if isinstance(error, dict):
        return str(error.get("type") or "error")
    for line in reversed(str(error).strip().splitlines()):
        match = _ERROR_NAME.match(line)
        if match:
            return match.group(1).rsplit(".", 1)[-1]
    return "error"


def _title(node: TraceNode) -> str:
    """The question, or what the input is when the prompt itself was the input."""
    if node.question:
        return f"«{_shorten(node.question, QUESTION_CHARS)}»"
    start = node.start
    if start is None:
        return "(starting)"
    kind = start.data.get("context_type", "input")
    length = start.data.get("context_length")
    return f"input: {kind}" + ("" if length is None else f", len {length:,}")


def _stats(node: TraceNode, now: float | None) -> str:
    calls = node.lm_calls
    sub = sum(1 for c in calls if c.data.get("purpose") != "turn")
    usage = node.own_usage.values()
    tokens_in = sum(u.input_tokens for u in usage)
    tokens_out = sum(u.output_tokens for u in usage)
    cost = sum(u.cost_usd for u in usage)
    parts = [f"iter {node.iterations}",
             f"{len(calls)} LM call{'' if len(calls) == 1 else 's'}"
             + (f" ({sub} sub)" if sub else ""),
             f"{_tokens(tokens_in)}→{_tokens(tokens_out)} tok", _cost(cost)]
    elapsed = node.elapsed_s
    if elapsed is None and now is not None and node.start is not None:
        elapsed = now - node.start.ts
    if elapsed is not None:
        parts.append(_seconds(max(elapsed, 0.0)))
    return " · ".join(parts)


def _status(node: TraceNode) -> tuple[str, str]:
    end = node.end
    if end is None:
        return "…", "yellow"
    if end.data.get("error") is not None:
        return "✗", "red"
    return ("✓", "green") if node.stop_reason == "final" else ("!", "yellow")


def _label(node: TraceNode, now: float | None) -> Text:
    mark, style = _status(node)
    return Text.assemble(
        (f"{mark} ", style), (f"d{node.depth} ", "bold cyan"), (_title(node), "bold"),
        "  ", (_stats(node, now), "dim"),
    )


def _code_line(node: TraceNode) -> Text | None:
    runs = node.code_executions
    if not runs:
        return None
    line = Text.assemble(("code ", "dim"))
    hidden = len(runs) - CODE_MARKS
    if hidden > 0:
        line.append(f"… +{hidden} ", "dim")
    for index, run in enumerate(runs[-CODE_MARKS:]):
        if index:
            line.append(", ", "dim")
        error = run.data.get("error")
        if error:
            line.append(_error_type(error), "red")
        else:
            line.append("final" if run.data.get("final") else "ok", "green")
    return line


def _subcall_lines(node: TraceNode) -> list[Text]:
    lines: list[Text] = []
    counts: dict[str, list[int]] = {}
    for call in node.lm_calls:
        purpose = call.data.get("purpose", "turn")
        if purpose != "turn":
            seen = counts.setdefault(purpose, [0, 0])
            seen[0] += 1
            seen[1] += 1 if call.data.get("error") else 0
    for purpose, (count, failed) in counts.items():
        line = Text.assemble((f"{purpose}: ", "dim"), f"{count} call{'' if count == 1 else 's'}")
        if failed:
            line.append(f" ({failed} failed)", "red")
        lines.append(line)
    open_batches: list[TraceEvent] = []
    for event in node.events:
        if event.type == "subcall_start":
            open_batches.append(event)
        elif event.type == "subcall_end" and open_batches:
            open_batches.pop()
    for batch in open_batches:
        lines.append(Text(f"running {batch.data.get('op')} ×{batch.data.get('count')}",
                          "yellow"))
    return lines


def _end_line(node: TraceNode) -> Text | None:
    end = node.end
    error = None if end is None else end.data.get("error")
    if error is not None:
        return Text(f"error {_error_type(error)}: {_shorten(error.get('message', ''), 100)}",
                    "red")
    if node.response is None:
        return None
    return Text.assemble(("→ ", "bold"), (_shorten(node.response, ANSWER_CHARS), "bold green"),
                         (f"  ({node.stop_reason})", "dim"))


def _add(tree: Tree, node: TraceNode, now: float | None, max_finished: int | None) -> None:
    for line in (_code_line(node), *_subcall_lines(node)):
        if line is not None:
            tree.add(line)
    children = node.children
    if max_finished is not None:
        finished = [c for c in children if c.end is not None]
        hidden = finished[:-max_finished] if max_finished else finished
        if hidden:
            tree.add(Text(f"… {len(hidden)} finished child run"
                          f"{'' if len(hidden) == 1 else 's'}", "dim"))
            folded = {id(c) for c in hidden}
            children = [c for c in children if id(c) not in folded]
    for child in children:
        _add(tree.add(_label(child, now)), child, now, max_finished)
    end_line = _end_line(node)
    if end_line is not None:
        tree.add(end_line)


def render_tree(node: TraceNode, *, now: float | None = None,
                max_finished_children: int | None = None) -> Tree:
    """A rich ``Tree`` of ``node`` and its subtree (one tree node per RLM node).

    Each label shows the depth, the question, the iteration, LM calls, tokens in→out, cost
    and elapsed time; leaves show code-execution statuses, counted sub-calls, children and
    the final answer.  ``now`` (epoch seconds) gives running nodes an elapsed time;
    ``max_finished_children`` folds older finished children into one line (live view).
    """
    tree = Tree(_label(node, now), guide_style="dim")
    _add(tree, node, now, max_finished_children)
    return tree


def print_tree(node: TraceNode, file: IO[str] | None = None) -> None:
    """Print ``render_tree(node)`` to ``file`` (stdout by default); used by ``rlm trace show``."""
    Console(file=file, highlight=False).print(render_tree(node))


# -- the sink ------------------------------------------------------------------------------
def _node_ref(node: TraceNode) -> str:
    return f"d{node.depth} {node.run_id[:6]}"


def _progress_line(node: TraceNode, event: TraceEvent) -> Text | None:
    """One plain line for the events worth a line (never one per plain ``llm_query``)."""
    head = ("rlm ", "dim"), (f"{'  ' * node.depth}{_node_ref(node)} ", "cyan")
    if event.type == "run_start":
        return Text.assemble(*head, "start ", _title(node))
    if event.type == "code_exec":
        error = event.data.get("error")
        status = ((_error_type(error), "red") if error else
                  ("final" if event.data.get("final") else "ok", "green"))
        return Text.assemble(*head, f"iter {event.iteration} code ", status)
    if event.type == "subcall_end":
        failed = event.data.get("failed", 0)
        return Text.assemble(*head, f"{event.data.get('op')} ×{event.data.get('count')}",
                             (f" ({failed} failed)" if failed else "", "red"),
                             f" {_seconds(event.data.get('elapsed_s', 0.0))}")
    if event.type == "run_end":
        line = Text.assemble(*head, "done ", (_stats(node, None), "dim"))
        end_line = _end_line(node)
        if end_line is not None:
            line.append("  ")
            line.append_text(end_line)
        return line
    return None


class ConsoleSink:
    """A ``TraceSink`` that draws the call tree on stderr while a run goes on.

    On a terminal it keeps a ``rich.live.Live`` display of ``render_tree`` for each root,
    refreshed several times a second; elsewhere (a pipe, a log file) it prints one plain line
    per step instead.  ``emit`` is thread-safe (events come from many threads) and only
    records the event; drawing happens on the refresh thread.  ``close`` stops the display
    and leaves the final tree on screen unless ``transient``.  The display starts at the
    first event, so a sink that receives none draws nothing.
    """

    def __init__(self, console: Console | None = None, transient: bool = False) -> None:
        if console is None:
            # Decide "terminal or not" once, now: while REPL code runs, sys.stderr may be a
            # capture proxy that does not report a tty, and rich asks again on every write.
            console = Console(stderr=True)
            console = Console(stderr=True, force_terminal=console.is_terminal)
        self.console = console
        self.transient = transient
        self.live_mode = self.console.is_terminal and not self.console.is_dumb_terminal
        # Re-entrant: rich may call ``_renderable`` from inside ``Live`` calls made here.
        self._lock = threading.RLock()
        self._nodes: dict[str, TraceNode] = {}
        self._roots: list[TraceNode] = []
        self._closed = False
        self._started = False
        # Never redirect stdout/stderr: that would swap process globals while code runs.
        self._live = Live(console=self.console, get_renderable=self._renderable,
                          transient=transient, refresh_per_second=8,
                          redirect_stdout=False, redirect_stderr=False) if self.live_mode else None

    def emit(self, event: TraceEvent) -> None:
        with self._lock:
            if self._closed:
                return
            node = self._nodes.get(event.run_id)
            if node is None:
                node = TraceNode(event.run_id, event.parent_run_id, event.depth)
                self._nodes[event.run_id] = node
                parent = self._nodes.get(event.parent_run_id or "")
                (parent.children if parent is not None else self._roots).append(node)
            node.events.append(event)
            # Write from an empty context: emit may run inside a REPL cell, whose context
            # routes sys.stderr into the cell's captured output (what the model reads).
            if not self.live_mode:
                line = _progress_line(node, event)
                if line is not None:
                    contextvars.Context().run(self.console.print, line, soft_wrap=True,
                                              highlight=False)
            elif not self._started and self._live is not None:
                self._started = True
                contextvars.Context().run(self._live.start)

    def _renderable(self) -> RenderableType:
        with self._lock:
            now = time.time()
            keep = None if self._closed else LIVE_FINISHED_CHILDREN
            return Group(*(render_tree(root, now=now, max_finished_children=keep)
                           for root in self._roots))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            live = self._live if self._started else None
        if live is not None:  # outside the lock: the refresh thread may be waiting for it
            contextvars.Context().run(live.stop)
