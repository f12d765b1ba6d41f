"""The messages the model reads: system prompt, first user message, per-turn feedback."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rlm.core.excerpts import keep_matches, search_terms
from rlm.core.repeats import found_nothing
from rlm.tools import Tool
from rlm.trace.preview import head_and_tail
from rlm.types import ExecResult

__all__ = [
    "FINAL_WITH_CODE_NOTE",
    "NO_CODE_FEEDBACK",
    "PROFILES",
    "PromptProfile",
    "answer_refused",
    "example_note",
    "extract_prompt",
    "first_user_message",
    "output_limit",
    "profile",
    "repeat_note",
    "shown_output",
    "system_prompt",
    "truncate",
    "turn_feedback",
    "verify_note",
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
- Both take `schema=` (a type such as int, list[str], Literal["a", "b"], or a JSON Schema \
dict) and then return a parsed value of that type instead of text, e.g. \
llm_query_batched(["Label each line as a or b:\\n" + c for c in chunks], \
schema=list[Literal["a", "b"]]). A failed slot of a batch is a QueryFailed string.
- `llm_map(instruction, items, schema=None, per_call=20) -> list`: `instruction` applied to \
every item, `per_call` items per call; one value per item, in order (labelling records).
- `rlm_query(prompt, context) -> str` and `rlm_query_batched(prompts, contexts)`: like \
llm_query (also with `schema=`), but the helper gets its own REPL for a large piece of \
context.
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
    billion parameters: a shorter prompt with worked examples, short outputs (every token
    of history costs prompt-processing time on a CPU), a check of answers the model
    never saw (``verify_answers``) and an end to a node that keeps repeating a fruitless
    block (``stop_when_stuck``).
    """

    name: str
    system: str
    continue_text: str
    max_output_chars: int | None = None
    miss_text: str | None = None
    verify_answers: bool = False
    strategy_hints: bool = False
    stop_when_stuck: bool = False
    #: The answers of the profile's worked examples (lower case): an answer that is one of
    #: them and in no output the model saw is refused every time (it was copied).
    example_answers: frozenset[str] = frozenset()


PROFILES = {
    "default": PromptProfile(
        "default", SYSTEM_PROMPT,
        "Continue{left}. When you know the answer, call FINAL(answer) in a block.",
    ),
    "small": PromptProfile(
        "small", SMALL_SYSTEM_PROMPT,
        "{question}If this output answers the question, reply with a block calling "
        "FINAL(answer). If it shows only a step towards the answer (a name you must look up "
        "next), search for that name. Otherwise write a new block that searches "
        "differently{left}.",
        max_output_chars=2_000,
        miss_text=(
            "{question}That block found nothing (no line, an empty result or an error), so "
            "you do not know the answer yet: do not call FINAL. "
            "Write a new block that searches differently{left}: fewer keywords, each "
            "matched separately (one re.search per word, with re.I)."
        ),
        verify_answers=True,
        strategy_hints=True,
        stop_when_stuck=True,
        example_answers=frozenset({"8443", "tarn", "voss works"}),
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
    answer_format: str | None = None,
    hint: str | None = None,
    opening: bool = False,
) -> str:
    """The first user message of a node: the question (if any) and what `context` is.

    ``answer_format`` says what shape the answer must have (``completion(schema=...)``);
    ``hint`` names a strategy (``rlm.core.strategy``, on the small profile); ``opening``:
    a block runs before the first turn, and the strategy's note on its output ends the
    message (``Loop``).
    """
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
    if answer_format:
        parts.append(f"Answer format: {answer_format}")
    if hint:
        parts.append(hint)
    if not opening:
        parts.append("Start by writing a ```repl block that looks at `context`.")
    return "\n\n".join(parts)


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` to about ``limit`` characters, keeping head and tail, with a marker."""
    return head_and_tail(text, limit, "output truncated", "not shown")


FINAL_WITH_CODE_NOTE = (
    "Your reply also wrote FINAL(...) after its code. It was not accepted: you had not seen "
    "what the code prints yet. If the output above confirms the answer, reply with a block "
    "calling FINAL(answer)."
)


def repeat_note(earlier: int, probed: bool) -> str:
    """Why a block was not run: it repeats block ``earlier`` of this node, which found nothing."""
    text = (f"This block repeats one you already ran (block {earlier} of this conversation), "
            "which found nothing, so it was not run again. Do something different.")
    if probed:
        text += (" Above: how often each word of the question occurs in `context`. Search "
                 "for ONE word that occurs (the rarest first), alone, and print the text "
                 "around each match: context[m.start()-300:m.end()+300].")
    return text


def verify_note(answer: str) -> str:
    """The check asked for an answer the model never saw in any output and did not compute."""
    shown = answer if len(answer) <= 200 else answer[:200] + "..."
    return (f"Your answer {shown!r} does not appear in any output you were shown, and no "
            "code computed it, so it was not accepted yet. Check it: search `context` for "
            "it (or for the fact it comes from) and print what you find. If the output "
            "confirms it, call FINAL again; otherwise keep searching.")


def example_note(answer: str) -> str:
    """An answer copied from a worked example of the system prompt."""
    return (f"Your answer {answer!r} is the answer of an example in my instructions, not "
            "of this question, and no output you were shown contains it. Search `context` "
            "for what the question asks.")


def answer_refused(problem: str) -> str:
    """An answer of the wrong shape (``completion(schema=...)``)."""
    return f"Your answer was not accepted: {problem}. Call FINAL again with a valid answer."


def output_limit(prompt_profile: str, max_output_chars: int) -> int:
    """The characters of output fed back per block on ``prompt_profile``."""
    chosen = profile(prompt_profile).max_output_chars
    return max_output_chars if chosen is None else min(max_output_chars, chosen)


def shown_output(code: str, result: ExecResult, limit: int) -> str:
    """What the model is shown of one block's output (cut to about ``limit`` characters)."""
    out = result.stdout
    if result.stderr:
        out += ("\n" if out else "") + f"[stderr]\n{result.stderr}"
    if result.error:
        out += ("\n" if out else "") + f"[error]\n{result.error}"
    if not out:
        return "(no output)"
    return keep_matches(out, limit, search_terms(code))


def turn_feedback(results: list[tuple[str, ExecResult]], *, iteration: int,
                  max_output_chars: int, iterations_left: int | None = None,
                  prompt_profile: str = "default", question: str | None = None) -> str:
    """The user message that reports what the reply's code blocks printed.

    The small profile repeats ``question`` after the output, so a small model keeps it in
    view (and does not answer with a step towards it).

    An entry whose code is ``""`` is a note of the loop itself (a FINAL not accepted, an
    answer to check): only its notes are shown.  Long output is cut around the matches of
    the block's search terms (``rlm.core.excerpts``).
    """
    chosen = profile(prompt_profile)
    max_output_chars = output_limit(prompt_profile, max_output_chars)
    ran = [(code, result) for code, result in results if code]
    parts = []
    for number, (code, result) in enumerate(ran, 1):
        label = f"Output of block {number}" if len(ran) > 1 else "Output"
        notes = "".join(f"\n[note] {n}" for n in result.notes)
        parts.append(f"{label}:\n{shown_output(code, result, max_output_chars)}{notes}")
    parts.extend(f"[note] {n}" for code, result in results if not code for n in result.notes)
    left = "" if iterations_left is None else f" ({iterations_left} turns left)"
    nothing = bool(ran) and all(found_nothing(r.stdout, r.error) for _c, r in ran)
    text = chosen.miss_text if nothing and chosen.miss_text else chosen.continue_text
    restated = f"Question: {question}\n" if question and "{question}" in text else ""
    parts.append(text.format(left=left, question=restated))
    return "\n\n".join(parts)


def extract_prompt() -> str:
    """The last-resort request when the turns run out."""
    return ("You have no turns left. Based only on what you found above, reply with your "
            "best final answer to the question, as plain text, with no code.")
