"""Replay a recorded run: its model replies, served again, and where a new run departs.

``Recording(tree)`` holds the replies of a recorded call tree; ``recording.responses`` is
a ``responses(messages, depth)`` function for the scripted backend, so a new run gets the
recorded reply for each call instead of a model's (no cost, no network, deterministic).
A turn is matched to the recorded node with the same depth and question whose earlier
replies the conversation already holds; a plain sub-call (``llm_query``, an extract, a
repair) to a recorded call of the same depth and prompt, in order.  A call with no
recorded reply is noted in ``missing`` and raises ``BadResponseError``.  ``compare(old,
new)`` pairs the nodes of two trees and returns the first code block whose code, output,
error or answer differs.  ``rlm replay TRACE`` runs both.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any

import rlm.errors as errors
from rlm.errors import BadResponseError, Cancelled, LimitExceeded
from rlm.trace.tree import TraceNode
from rlm.types import Message

__all__ = ["Divergence", "Recording", "compare"]

_COMPARED = ("code", "stdout", "stderr", "error", "final")


@dataclass(frozen=True)
class Divergence:
    """Where a replay departed from its recording.

    ``kind``: ``"output"`` (a code block's ``field`` differs), ``"unrecorded"`` (a call
    the recording has no reply for), ``"missing_node"`` / ``"extra_node"`` (a child that
    one run started and the other did not), ``"blocks"`` (a node ran fewer or more code
    blocks).  ``where`` names the node (``depth``, ``question``) and the turn.
    """

    kind: str
    where: str
    field: str | None = None
    recorded: Any = None
    replayed: Any = None
    ts: float = 0.0

    def describe(self) -> str:
        text = f"{self.kind} at {self.where}"
        if self.field:
            text += f": {self.field} differs"
        if self.recorded is not None or self.replayed is not None:
            text += f"\n  recorded: {_short(self.recorded)}\n  replayed: {_short(self.replayed)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "where": self.where, "field": self.field,
                "recorded": self.recorded, "replayed": self.replayed}


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _where(node: TraceNode, iteration: int | None = None) -> str:
    turn = "" if iteration is None else f", turn {iteration}"
    return f"depth {node.depth} «{(node.question or '(the prompt)')[:60]}»{turn}"


class Recording:
    """The recorded replies of one call tree, served by ``responses`` (thread-safe)."""

    def __init__(self, tree: TraceNode) -> None:
        self.tree = tree
        self.missing: list[Divergence] = []
        self._lock = threading.Lock()
        self._turns: dict[int, list[tuple[TraceNode, list[str]]]] = defaultdict(list)
        self._calls: dict[tuple[int, str], deque[dict[str, Any]]] = defaultdict(deque)
        self._served: set[tuple[str, int]] = set()
        for node in tree.walk():
            replies = [e.data.get("response", "") for e in node.lm_calls
                       if e.data.get("purpose") == "turn"]
            self._turns[node.depth].append((node, replies))
            for call in node.lm_calls:
                if call.data.get("purpose") != "turn":
                    depth = call.data.get("call_depth", node.depth)
                    self._calls[(depth, call.data.get("prompt", ""))].append(call.data)

    def responses(self, messages: list[Message], depth: int) -> str:
        """The recorded reply for this call (the scripted backend's ``responses``)."""
        with self._lock:
            if messages and messages[0]["role"] == "system":
                reply = self._turn(messages, depth)
                if reply is not None:
                    return reply
            prompt = messages[-1]["content"] if messages else ""
            queue = self._calls.get((depth, prompt))
            if queue:
                return _replayed(queue.popleft())
            self.missing.append(Divergence(
                "unrecorded", f"depth {depth}", recorded=None,
                replayed=f"a call with last message {prompt[:200]!r}", ts=time.time()))
            if messages and messages[0]["role"] == "system":  # a turn: end the node cleanly
                raise Cancelled(f"replay: no recorded reply for this turn at depth {depth}")
        raise BadResponseError(f"replay: no recorded reply for this call at depth {depth}")

    def _turn(self, messages: list[Message], depth: int) -> str | None:
        first = messages[1]["content"] if len(messages) > 1 else ""
        said = [m["content"] for m in messages if m["role"] == "assistant"]
        for node, replies in self._turns.get(depth, []):
            if node.question is not None and node.question not in first:
                continue
            if replies[:len(said)] != said or (node.run_id, len(said)) in self._served:
                continue  # another node, or an identical sibling already took this turn
            if len(replies) <= len(said):
                stop = _limit(node.stop_reason)
                if stop is not None:  # the recorded node stopped on a limit here: so do we
                    raise stop
                continue
            self._served.add((node.run_id, len(said)))
            return replies[len(said)]
        return None


def _replayed(call: dict[str, Any]) -> str:
    """A recorded call's reply, or its recorded failure raised again."""
    if "response" in call:
        return str(call["response"])
    error = call.get("error") or {}
    kind = getattr(errors, str(error.get("type")), None)
    if not (isinstance(kind, type) and issubclass(kind, errors.BackendError)):
        kind = BadResponseError
    raise kind(str(error.get("message", "replay: the recorded call failed")))


def _limit(stop_reason: str | None) -> LimitExceeded | None:
    """The exception that stops a node with ``stop_reason`` (a limit), if it is one."""
    for name in dir(errors):
        kind = getattr(errors, name)
        if isinstance(kind, type) and issubclass(kind, LimitExceeded) \
                and kind is not LimitExceeded and kind.stop_reason == stop_reason:
            return kind(f"replay: the recorded run stopped here ({stop_reason})")
    return None


def compare(recorded: TraceNode, replayed: TraceNode) -> Divergence | None:
    """The first difference between two runs of one tree (code blocks, then children),
    in the order the recorded run wrote them; ``None`` when they agree."""
    found = _differences(recorded, replayed)
    if not found:
        return None
    return min(found, key=lambda d: d.ts)


def _differences(old: TraceNode, new: TraceNode) -> list[Divergence]:
    out: list[Divergence] = []
    old_blocks, new_blocks = old.code_executions, new.code_executions
    for a, b in zip(old_blocks, new_blocks, strict=False):
        for name in _COMPARED:
            if a.data.get(name) != b.data.get(name):
                out.append(Divergence("output", _where(old, a.iteration), name,
                                      a.data.get(name), b.data.get(name), ts=a.ts))
                break
    if len(old_blocks) != len(new_blocks):
        at = old_blocks[len(new_blocks)] if len(old_blocks) > len(new_blocks) else None
        out.append(Divergence("blocks", _where(old), None, len(old_blocks), len(new_blocks),
                              ts=at.ts if at else (old.end.ts if old.end else 0.0)))
    # children of a parallel batch may start in another order: pair them by question
    unpaired = list(new.children)
    for child in old.children:
        twin = next((c for c in unpaired if c.question == child.question), None)
        if twin is None:
            out.append(Divergence("missing_node", _where(child), None, child.question, None,
                                  ts=child.start.ts if child.start else 0.0))
            continue
        unpaired.remove(twin)
        out += _differences(child, twin)
    end = old.end.ts if old.end else 0.0
    out += [Divergence("extra_node", _where(extra), None, None, extra.question, ts=end)
            for extra in unpaired]
    return out
