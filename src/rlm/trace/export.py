"""Training data from traces: each node's conversation as one JSONL record.

The writer side is ``TurnLog``: the LM handler asks it, for each turn, which messages the
node's conversation gained since its previous turn, so each message is written once (in
the turn's ``lm_call``, as ``messages``, after ``kept_messages`` messages of the previous
conversation and its reply; a compacted history keeps fewer).  ``conversation(node)``
rebuilds the exact messages from them: system prompt, question, every reply and every
code output as it was fed back.  A trace written before these fields existed gives a
reconstruction instead (``exact: false``): the question, the replies and the outputs.

``chat_records(roots, results)`` yields the records ``rlm trace export --format
chat-jsonl`` writes: one per node, with the node's and the run's outcome, and the score
of the matching row of an ``rlm bench`` results file when one is given.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from rlm.trace.preview import preview
from rlm.trace.tree import TraceNode
from rlm.types import Message

__all__ = ["EXPORT_FORMATS", "TurnLog", "chat_records", "conversation"]

#: The formats ``rlm trace export`` writes.
EXPORT_FORMATS = ("chat-jsonl",)


def _digest(message: Mapping[str, Any]) -> str:
    text = json.dumps(message, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class TurnLog:
    """Remembers (as digests) what each node's model has been sent; thread-safe."""

    def __init__(self) -> None:
        self._said: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def fields(self, run_id: str, messages: list[Message], reply: str | None
               ) -> dict[str, Any]:
        """The ``lm_call`` fields of a turn of node ``run_id``: ``kept_messages`` and the
        new ``messages`` (long contents as bounded previews)."""
        digests = [_digest(m) for m in messages]
        with self._lock:
            before = self._said.get(run_id, [])
            kept = 0
            for old, new in zip(before, digests, strict=False):
                if old != new:
                    break
                kept += 1
            said = digests
            if reply is not None:
                said = [*digests, _digest({"role": "assistant", "content": reply})]
            self._said[run_id] = said
        new_messages = [{**m, "content": preview(str(m.get("content", "")))}
                        for m in messages[kept:]]
        return {"kept_messages": kept, "messages": new_messages}


def conversation(node: TraceNode) -> tuple[list[dict[str, Any]], bool]:
    """The messages of ``node``'s conversation, ending with its last reply, and whether
    they are exact (recorded) or a reconstruction."""
    turns = [e for e in node.lm_calls if e.data.get("purpose") == "turn"]
    if turns and all("messages" in e.data for e in turns):
        said: list[dict[str, Any]] = []
        for turn in turns:
            said = said[:int(turn.data.get("kept_messages", 0))] + list(turn.data["messages"])
            if "response" in turn.data:
                said.append({"role": "assistant", "content": turn.data["response"]})
        return _with_extract(node, said), True
    rebuilt: list[dict[str, Any]] = [
        {"role": "user", "content": node.question or "(the input is in `context`)"}]
    blocks = node.code_executions
    for turn in turns:
        if "response" not in turn.data:
            continue
        rebuilt.append({"role": "assistant", "content": turn.data["response"]})
        outputs = [_output(b.data) for b in blocks if b.iteration == turn.iteration]
        if outputs:
            rebuilt.append({"role": "user", "content": "\n\n".join(outputs)})
    if rebuilt[-1]["role"] == "user" and len(rebuilt) > 1:
        rebuilt.pop()  # the output of the block that answered was never fed back
    return _with_extract(node, rebuilt), False


def _output(block: Mapping[str, Any]) -> str:
    parts = [f"Code executed:\n```python\n{block.get('code', '')}\n```"]
    for name in ("stdout", "stderr", "error"):
        if block.get(name):
            parts.append(f"{name}:\n{block[name]}")
    return "\n".join(parts)


def _with_extract(node: TraceNode, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` then the extract call's request and answer, when the node made one."""
    for call in node.lm_calls:
        if call.data.get("purpose") == "extract" and "response" in call.data:
            messages = [*messages, {"role": "user", "content": call.data.get("prompt", "")},
                        {"role": "assistant", "content": call.data["response"]}]
    return messages


def _usage(node: TraceNode) -> dict[str, Any]:
    return {key: usage.to_dict() for key, usage in node.own_usage.items()}


def _score_row(root: TraceNode, results: Iterable[Mapping[str, Any]],
               method: str | None) -> Mapping[str, Any] | None:
    rows = [r for r in results if r.get("question") == root.question
            and (method is None or r.get("method") == method)]
    return rows[-1] if rows else None


def chat_records(roots: Iterable[TraceNode], results: Iterable[Mapping[str, Any]] = (),
                 *, method: str | None = "rlm") -> Iterator[dict[str, Any]]:
    """One record per node of each run in ``roots``, depth first.

    ``results``: rows of an ``rlm bench`` results file; a run whose question is a row's
    (of ``method``, the last such row) gets its ``score``, ``task`` and ``instance_id``.
    """
    rows = list(results)
    for index, root in enumerate(roots):
        row = _score_row(root, rows, method) if rows else None
        outcome: dict[str, Any] = {"response": root.response,
                                   "stop_reason": root.stop_reason,
                                   "cost_usd": root.cost_usd}
        if row is not None:
            outcome.update(score=row.get("score"), task=row.get("task"),
                           instance_id=row.get("id"), method=row.get("method"))
        for node in root.walk():
            messages, exact = conversation(node)
            yield {"run": index, "root_run_id": root.run_id, "run_id": node.run_id,
                   "parent_run_id": node.parent_run_id, "depth": node.depth,
                   "question": node.question, "messages": messages, "exact": exact,
                   "response": node.response, "stop_reason": node.stop_reason,
                   "iterations": node.iterations, "usage": _usage(node),
                   "outcome": outcome}
