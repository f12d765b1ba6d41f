"""Limits: how ``max_budget``, ``max_iterations`` and ``max_timeout`` stop a run.

Every limit is shared by the whole call tree.  When one is reached, ``completion()`` does
not raise: it returns an ``RLMResult`` whose ``stop_reason`` says which limit stopped it,
with the best answer available in ``response``.

The scripted "model" below never calls ``FINAL``, so only a limit can end each run:

1. ``max_budget`` (USD): each LM call costs $0.01.  A call whose estimated cost does not
   fit in what is left is never started, so the spend never passes the budget.
2. ``max_iterations`` (REPL turns, summed over the tree): when the turns run out, one last
   "extract" call asks the model for its best answer (``answer_source == "extract"``).
3. ``max_timeout`` (seconds since the run started): a watchdog stops the tree even while
   calls are in flight.

Run it with::

    python examples/limits.py
"""

from __future__ import annotations

import time

from rlm import RLM, Message


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


def never_finishes(messages: list[Message], depth: int) -> str:
    """A model that keeps working and never submits an answer."""
    if messages[0]["role"] != "system":
        return "a sub-model answer"  # a plain llm_query call
    if "no turns left" in messages[-1]["content"]:
        return "My best guess so far: 42."  # the extract call after the last turn
    return "Still looking.\n" + repl("notes = llm_query_batched(['look at part 1', 'part 2'])")


def report(title: str, result, elapsed: float) -> None:
    print(f"{title}")
    print(f"  stop_reason:   {result.stop_reason}")
    print(f"  response:      {result.response!r}")
    print(f"  answer_source: {result.answer_source}")
    print(f"  lm calls:      {sum(u.calls for u in result.usage.values())}")
    print(f"  cost_usd:      {result.cost_usd:.2f}")
    print(f"  elapsed:       {elapsed:.2f}s")


def run(title: str, **options) -> None:
    backend_kwargs = {"responses": never_finishes, "cost_per_call": 0.01}
    backend_kwargs.update(options.pop("backend_kwargs", {}))
    started = time.monotonic()
    with RLM(backend="scripted", backend_kwargs=backend_kwargs, **options) as rlm:
        result = rlm.completion("What is the answer?", context="some long input " * 1000)
    report(title, result, time.monotonic() - started)


def main() -> None:
    run("1. max_budget=0.05 (each call costs $0.01)", max_budget=0.05)
    run("2. max_iterations=3 (then one extract call)", max_iterations=3)
    run("3. max_timeout=0.5 (each call takes 0.2s)", max_timeout=0.5,
        backend_kwargs={"latency_s": 0.2})


if __name__ == "__main__":
    main()
