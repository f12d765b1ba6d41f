"""The messages the model reads: system prompt, first user message, per-turn feedback."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rlm.tools import Tool
from rlm.trace.preview import head_and_tail
from rlm.types import ExecResult

__all__ = [
    "NO_CODE_FEEDBACK",
    "PROFILES",
    "PromptProfile",
    "extract_prompt",
    "first_user_message",
    "profile",
    "system_prompt",
    "truncate",
    "turn_feedback",
]

SYSTEM_PROMPT = """\
You answer questions about an input that is too long to read at once. The input is \
stored in a Python REPL as the variable `context`; you never see it whole. You work by \
writing Python code in a ```repl fenced block. I run each block and show you its output \
(long output is cut), and you continue until you know the answer.

Available in the REPL:
- `context`: the input (read it with code: len, slicing, split, re, loops).
{sub_calls}- `FINAL(answer)`: submit the final answer. `FINAL_VAR("name")`: submit a variable.
- `SHOW_VARS()`: list your variables. `budget()`: what is left of the limits.
{tools}
Rules:
- Write exactly one ```repl block per reply, then stop and wait for its output.
- Look at the data before you answer; prefer plain Python (re, str methods, counting) \
when it can answer exactly{chunk_rule}.
- Never reassign `context`; keep results in new variables. Variables persist between blocks.
- When you know the answer, call FINAL(answer) in a block. Do not guess: verify with code.
{depth_note}"""

SMALL_SYSTEM_PROMPT = """\
You answer a question about a long text. The text is in the Python variable `context` \
(you cannot see it). Write Python code to search it. Reply with ONE ```python block and \
nothing else. I run it and show you what it printed. When the printed output shows the \
answer, reply with a block that calls FINAL(answer).

Example.
Question: What port does the Payments service use?
```python
import re
for line in context.split("\\n"):
    if re.search(r"Payments", line, re.I) and re.search(r"port", line, re.I):
        print(line)
```
Output: 2024-03-01 payments service listening on port 8443
```python
FINAL("8443")
```

Rules: search with distinctive words from the question; print only matching lines, never the \
whole context; never assign to `context`.{small_sub_calls}
{tools}"""

SUB_CALLS_HELP = """\
- `llm_query(prompt) -> str`: ask a language model one question. It sees ONLY the \
prompt you pass, so include the text it must read, e.g. \
llm_query("Find the date in this text:\\n" + chunk).
- `llm_query_batched(prompts) -> list[str]`: many llm_query calls run concurrently.
- `rlm_query(prompt, context) -> str` and `rlm_query_batched(prompts, contexts)`: like \
llm_query, but the helper gets its own REPL for a large piece of context.
"""
NO_SUB_CALLS_HELP = "- No sub-model calls in this run: llm_query and rlm_query are disabled.\n"

SESSION_NOTE = """\
This is turn {turn} of a conversation. Earlier inputs are still in the REPL as {names}, \
and `history` is a list of {{"question", "answer"}} of earlier turns.
"""

NO_CODE_FEEDBACK = (
    "I found no ```repl code block in your reply, so nothing ran. Write Python code in a "
    "```repl block to inspect `context`, or call FINAL(answer) in a block when you are sure."
)


def _tools_text(tools: Mapping[str, Tool]) -> str:
    if not tools:
        return ""
    lines = []
    for tool in tools.values():
        lines.append(f"- `{tool.call}`" + (f": {tool.doc}" if tool.doc else ""))
    return "Tools:\n" + "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PromptProfile:
    """The wording used for one kind of model.

    ``default`` suits capable hosted models; ``small`` is for the embedded models of a few
    billion parameters: a shorter prompt with a worked example, and short outputs (every
    token of history costs prompt-processing time on a CPU).
    """

    name: str
    system: str
    continue_text: str
    max_output_chars: int | None = None
    miss_text: str | None = None


PROFILES = {
    "default": PromptProfile(
        "default", SYSTEM_PROMPT,
        "Continue{left}. When you know the answer, call FINAL(answer) in a block.",
    ),
    "small": PromptProfile(
        "small", SMALL_SYSTEM_PROMPT,
        "If this output shows the answer, reply with a block calling FINAL(answer). "
        "Otherwise write a new block that searches differently{left}.",
        max_output_chars=2_000,
        miss_text=(
            "That block found nothing (no line, an empty result or an error), so you do not "
            "know the answer yet: do not call FINAL. "
            "Write a new block that searches differently{left}: fewer keywords, each "
            "matched separately (one re.search per word, with re.I)."
        ),
    ),
}


def profile(name: str) -> PromptProfile:
    """The profile called ``name`` (``LoopConfig`` refuses unknown names; here they get the
    default, so a backend naming a profile this version lacks still runs)."""
    return PROFILES.get(name, PROFILES["default"])


def system_prompt(
    *,
    depth: int,
    max_depth: int,
    tools: Mapping[str, Tool] | None = None,
    chunk_chars: int = 50_000,
    template: str | None = None,
    prompt_profile: str = "default",
    sub_calls: bool = True,
) -> str:
    """The system prompt for a node at ``depth`` (``template`` replaces the profile's)."""
    can_recurse = depth + 1 < max_depth
    depth_note = "" if can_recurse or not sub_calls else (
        "Here rlm_query is a plain model call (maximum depth reached).\n"
    )
    return (template or profile(prompt_profile).system).format(
        tools=_tools_text(tools or {}), chunk_chars=f"{chunk_chars:,}", depth_note=depth_note,
        sub_calls=SUB_CALLS_HELP if sub_calls else NO_SUB_CALLS_HELP,
        chunk_rule=(f"; use llm_query on chunks of at most ~{chunk_chars:,} characters when "
                    "you must understand text") if sub_calls else "",
        small_sub_calls=(" `llm_query(text)` asks a helper model about a text you pass to it "
                         "(it sees nothing else).") if sub_calls else "",
    )


def first_user_message(
    question: str | None,
    context_description: str,
    *,
    session_turn: int = 0,
    session_names: list[str] | None = None,
) -> str:
    """The first user message of a node: the question (if any) and what `context` is."""
    parts = []
    if session_turn:
        parts.append(SESSION_NOTE.format(turn=session_turn + 1,
                                         names=", ".join(session_names or [])))
    parts.append(context_description)
    if question:
        parts.append(f"Question: {question}")
    else:
        parts.append("The task is in `context`: read it with code, do what it asks, "
                     "and submit the result with FINAL.")
    parts.append("Start by writing a ```repl block that looks at `context`.")
    return "\n\n".join(parts)


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` to about ``limit`` characters, keeping head and tail, with a marker."""
    return head_and_tail(text, limit, "output truncated", "not shown")


_NOTHING = {"", "0", "[]", "{}", "()", "None", "set()"}


def turn_feedback(results: list[tuple[str, ExecResult]], *, iteration: int,
                  max_output_chars: int, iterations_left: int | None = None,
                  prompt_profile: str = "default") -> str:
    """The user message that reports what the reply's code blocks printed."""
    chosen = profile(prompt_profile)
    if chosen.max_output_chars is not None:
        max_output_chars = min(max_output_chars, chosen.max_output_chars)
    parts = []
    for number, (_code, result) in enumerate(results, 1):
        out = result.stdout
        if result.stderr:
            out += ("\n" if out else "") + f"[stderr]\n{result.stderr}"
        if result.error:
            out += ("\n" if out else "") + f"[error]\n{result.error}"
        out = truncate(out, max_output_chars) if out else "(no output)"
        label = f"Output of block {number}" if len(results) > 1 else "Output"
        notes = "".join(f"\n[note] {n}" for n in result.notes)
        parts.append(f"{label}:\n{out}{notes}")
    left = "" if iterations_left is None else f" ({iterations_left} turns left)"
    found_nothing = all(result.error or result.stdout.strip() in _NOTHING for _c, result in results)
    text = chosen.miss_text if found_nothing and chosen.miss_text else chosen.continue_text
    parts.append(text.format(left=left))
    return "\n\n".join(parts)


def extract_prompt() -> str:
    """The last-resort request when the turns run out."""
    return ("You have no turns left. Based only on what you found above, reply with your "
            "best final answer to the question, as plain text, with no code.")
