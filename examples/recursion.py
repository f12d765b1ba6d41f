"""Recursion: ``rlm_query`` starts child RLMs, each with its own REPL (``max_depth=2``).

The root gets three regional sales reports.  It hands each report to a child RLM with
``rlm_query_batched(prompts, contexts)``.  Each child runs one level deeper (depth 1) in a
fresh REPL where ``context`` is its own report; it totals the units with Python and asks a
plain sub-model (``llm_query``, an LM call at depth 2) which product sold most.

Depth convention: the root REPL runs at depth 0 and its LM calls are at depth 1.
``rlm_query`` from depth ``d`` starts a child RLM only while ``d + 1 < max_depth``; with
``max_depth=2`` the root may start children, but a child's own ``rlm_query`` would be a
plain LM call.

One callable scripted backend plays every model: it tells an RLM turn (the messages start
with a system prompt) from a plain sub-call (a single user message).  At the end the
script prints the call tree from ``result.trace``.

Run it with::

    python examples/recursion.py
"""

from __future__ import annotations

import re
from collections import Counter

from rlm import RLM, Message, TraceNode

REPORTS = {
    "north": "tea,120\ncoffee,340\ncocoa,45\n",
    "south": "tea,510\ncoffee,220\ncocoa,90\n",
    "west": "tea,80\ncoffee,95\ncocoa,300\n",
}


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


ROOT_TURNS = [
    "Each region is a separate report: one child RLM per region.\n"
    + repl(
        "regions = sorted(context)\n"
        "answers = rlm_query_batched(\n"
        "    [f'Summarise the {r} sales report: total units and best product.' for r in regions],\n"
        "    [context[r] for r in regions],\n"
        ")\n"
        "for region, answer in zip(regions, answers):\n"
        "    print(region, '->', answer)"
    ),
    repl("FINAL('; '.join(f'{r}: {a}' for r, a in zip(regions, answers)))"),
]

CHILD_TURNS = [
    repl(
        "rows = [line.split(',') for line in context.splitlines() if line]\n"
        "total = sum(int(units) for _, units in rows)\n"
        "best = llm_query('Which product sold the most units? Reply with its name.\\n' + context)\n"
        "FINAL(f'{total} units, best: {best}')"
    ),
]


def model(messages: list[Message], depth: int) -> str:
    """Every model of the tree, scripted."""
    if messages[0]["role"] != "system":
        # A plain sub-call (llm_query): read the CSV in the prompt, name the top product.
        rows = re.findall(r"(\w+),(\d+)", messages[-1]["content"])
        return max(rows, key=lambda row: int(row[1]))[0]
    turn = sum(1 for m in messages if m["role"] == "assistant")
    return (ROOT_TURNS if depth == 0 else CHILD_TURNS)[turn]


def show(node: TraceNode, indent: int = 0) -> None:
    """Print one node of the call tree and its children."""
    calls = Counter(event.data["purpose"] for event in node.lm_calls)
    own_cost = sum(u.cost_usd for u in node.own_usage.values())
    pad = "    " * indent
    print(f"{pad}[depth {node.depth}] {node.question or '(root input)'}")
    print(f"{pad}    iterations={node.iterations} lm_calls={dict(calls)} own cost=${own_cost:.3f}")
    print(f"{pad}    -> {node.response} ({node.stop_reason})")
    for child in node.children:
        show(child, indent + 1)


def main() -> None:
    with RLM(backend="scripted",
             backend_kwargs={"responses": model, "cost_per_call": 0.002},
             max_depth=2) as rlm:
        result = rlm.completion("Summarise sales by region.", context=REPORTS)

    print(f"response:    {result.response}")
    print(f"stop_reason: {result.stop_reason}")
    print(f"cost_usd:    {result.cost_usd:.3f} (whole tree)")
    print("call tree:")
    show(result.trace)


if __name__ == "__main__":
    main()
