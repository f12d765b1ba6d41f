"""Remake the golden fixture traces shipped in ``rlm/trace/fixtures`` (scripted backend).

Usage: .venv/bin/python scripts/make_trace_fixtures.py [OUT_DIR]

Each fixture is a real run of the engine on the scripted backend, so it has exactly the
events and fields the current writer produces.  Replies carry a little latency, so the
timeline of a fixture shows which calls ran in parallel.  Run ids and times change from
one run of this script to the next; the shapes (nodes, events, figures) do not.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rlm import RLM
from rlm.errors import BadResponseError

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "rlm" / "trace" / "fixtures"
PRICE = {"cost_per_call": 0.001, "latency_s": 0.02}


def repl(code: str) -> str:
    return f"Let me look.\n```repl\n{code}\n```"


def _said(messages: list[dict[str, str]], text: str) -> bool:
    return any(text in m["content"] for m in messages)


def tree_replies(messages: list[dict[str, str]], depth: int) -> str:
    """max_depth=4: the root batches two children (depth 1); child "north" starts a chain
    down to depth 3, whose node batches three plain sub-calls; child "south" fails once."""
    if messages[0]["role"] != "system":
        return f"leaf says {messages[-1]['content'].upper()}"
    if depth == 0:
        if _said(messages, "children said"):
            return repl("FINAL('north+south: ' + ', '.join(parts))")
        return repl("parts = rlm_query_batched(['survey north', 'survey south'],"
                    " contexts=[context[:60], context[60:]])\nprint('children said', parts)")
    if _said(messages, "survey south"):
        if _said(messages, "ZeroDivisionError"):
            return repl("FINAL('south is ' + str(len(context)))")
        return repl("ratio = len(context) / 0")
    if depth == 3:
        return repl("leaves = llm_query_batched(['x', 'y', 'z'])\nFINAL('/'.join(leaves))")
    if depth == 2:
        return repl("FINAL(rlm_query('go deepest', context=context[:10]))")
    return repl("deep = rlm_query('go deeper', context=context[:20])\nprint(deep)\n"
                "FINAL('north found ' + deep)")


def batch_replies(messages: list[dict[str, str]], depth: int) -> str:
    if messages[0]["role"] != "system":
        return f"section {messages[-1]['content'][-1]} is fine"
    if _said(messages, "summaries:"):
        return repl("FINAL(' | '.join(summaries))")
    return repl("chunks = [context[i:i + 40] for i in range(0, len(context), 40)]\n"
                "summaries = llm_query_batched([f'summarise part {i}' for i in range(4)])\n"
                "print('summaries:', len(summaries))")


def budget_replies(messages: list[dict[str, str]], depth: int) -> str:
    turn = sum(m["role"] == "assistant" for m in messages)
    return repl(f"print('still counting', {turn})")


def error_replies(messages: list[dict[str, str]], depth: int) -> str:
    if messages[0]["role"] != "system":
        raise BadResponseError("the scripted server sent an empty choice")
    if _said(messages, "fallback"):
        return repl("FINAL('answered without the sub-call')")
    if _said(messages, "BadResponseError"):
        return repl("print('fallback: count words')\nwords = len(context.split())")
    return repl("summary = llm_query('summarise: ' + context[:30])")


def session_replies(messages: list[dict[str, str]], depth: int) -> str:
    if _said(messages, "second question"):
        return repl("FINAL('kept ' + str(total) + ' then ' + str(len(context)))")
    return repl("total = len(context)\nFINAL('first: ' + str(total))")


def make(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.jsonl"):
        old.unlink()
    text = "the quick brown fox jumps over the lazy dog " * 6
    runs = [
        ("tree", tree_replies, {"max_depth": 4}, [("Survey both halves.", text)]),
        ("batch", batch_replies, {"max_depth": 1}, [("Summarise each part.", text)]),
        ("budget", budget_replies, {"max_budget": 0.0035}, [("Count forever.", text)]),
        ("error", error_replies, {}, [("Summarise it.", text)]),
        ("session", session_replies, {"persistent": True},
         [("first question", "alpha beta"), ("second question", "gamma")]),
    ]
    written = []
    for name, replies, options, calls in runs:
        path = out / f"{name}.jsonl"
        with RLM(backend="scripted", backend_kwargs={"responses": replies, **PRICE},
                 trace=path, **options) as rlm:
            for question, context in calls:
                rlm.completion(question, context=context)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in make(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(path)
