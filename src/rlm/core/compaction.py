"""Keeping a node's history inside its model's window.

A node's history grows by one reply and one output every turn; on the embedded model (a
window of 8,192 tokens) a dozen turns fill it.  Before a turn whose prompt would come near
the window, ``compact`` folds the oldest turns into a short digest appended to the first
user message: what each turn ran (its first lines of code) and the start of what it
printed.  The system prompt, the question and the latest turns stay as they were; the
REPL's variables are untouched, so nothing computed is lost.
"""

from __future__ import annotations

from rlm.types import Message

__all__ = ["DIGEST_HEADER", "compact", "estimate"]

#: Characters per token assumed for the history (code and numbers tokenise densely).
CHARS_PER_TOKEN = 3.0
#: Compact when the history would use more than this share of the room for it.
HIGH_WATER = 0.8
#: Turns (a reply and its output) always kept as they are.
KEEP_TURNS = 2

DIGEST_HEADER = "Summary of your earlier turns (their variables are still in the REPL):"

_CODE_LINES = 4
_OUTPUT_CHARS = 240
_SHORT_CHARS = 100


def estimate(messages: list[Message]) -> int:
    """A cautious token count for ``messages``."""
    return int(sum(len(m.get("content", "")) + 8 for m in messages) / CHARS_PER_TOKEN)


def _digest_turn(number: int, reply: str, feedback: str) -> str:
    code = [line for line in reply.splitlines() if line.strip() and not line.startswith("```")]
    shown = "\n".join(f"    {line}" for line in code[:_CODE_LINES])
    if len(code) > _CODE_LINES:
        shown += "\n    ..."
    output = " ".join(feedback.split())
    output = output.removeprefix("Output: ")
    if len(output) > _OUTPUT_CHARS:
        output = output[:_OUTPUT_CHARS] + " ..."
    return f"turn {number} ran:\n{shown or '    (no code)'}\n  and printed: {output}"


def compact(messages: list[Message], window_tokens: int, reserve_tokens: int = 0) -> int:
    """Fold the oldest turns of ``messages`` (in place) until the history fits.

    ``messages`` is ``[system, first user, (assistant, user)*]``; ``reserve_tokens`` is kept
    free for the reply.  Returns how many turns were folded (0 when it already fits or
    there is nothing left to fold).
    """
    room = max(1, window_tokens - reserve_tokens)
    if estimate(messages) <= HIGH_WATER * room or len(messages) < 4:
        return 0
    first = messages[1]["content"]
    head, _, old_digest = first.partition("\n\n" + DIGEST_HEADER + "\n")
    entries = [e.removeprefix("- ") for e in old_digest.split("\n- ")] if old_digest else []
    pairs = (len(messages) - 2) // 2
    turns = [(messages[2 + 2 * i], messages[3 + 2 * i]) for i in range(pairs)]
    tail = messages[2 + 2 * pairs:]
    folded = 0
    target = HIGH_WATER * room * 0.75

    def rebuilt(digest: str) -> list[Message]:
        return [messages[0], {"role": "user", "content": f"{head}\n\n{DIGEST_HEADER}\n{digest}"},
                *[m for pair in turns for m in pair], *tail]

    while len(turns) > KEEP_TURNS:
        reply, feedback = turns.pop(0)
        folded += 1
        entries.append(_digest_turn(len(entries) + 1, reply["content"], feedback["content"]))
        if estimate(rebuilt(_render(entries, 0))) <= target:
            break
    if not folded:
        return 0
    for level in range(len(entries) + 1):  # shorten the digest itself until it fits
        candidate = rebuilt(_render(entries, level))
        if estimate(candidate) <= target:
            break
    messages[:] = candidate
    return folded


def _render(entries: list[str], level: int) -> str:
    """The digest's lines: level 0 in full, then each entry cut to a line, then the oldest
    entries dropped one by one (level - 1 of them)."""
    if level == 0:
        return "\n".join(f"- {entry}" for entry in entries)
    dropped = min(level - 1, len(entries))
    short = [" ".join(entry.split())[:_SHORT_CHARS] for entry in entries[dropped:]]
    lines = [f"- {entry}" for entry in short]
    if dropped:
        lines.insert(0, f"- (turns 1 to {dropped}: not kept)")
    return "\n".join(lines)
