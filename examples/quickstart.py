"""Quickstart: one completion over a long generated text, fully offline.

Shows the basic call ``RLM(...).completion(question, context=data)`` and the fields of the
result: ``response``, ``stop_reason``, ``cost_usd``, ``usage`` and ``iterations``.

The "model" here is the scripted backend: a fixed list of replies, each a ```repl block,
that the RLM runs in its Python REPL one turn after another.  Swap in a real backend (see
``openai_backend.py``) and the rest of the code stays the same.

Run it with::

    python examples/quickstart.py
"""

from __future__ import annotations

import random

from rlm import RLM


def make_log(lines: int = 20_000, seed: int = 7) -> str:
    """A long, boring server log with a few ERROR lines in it."""
    rng = random.Random(seed)
    levels = ["INFO"] * 97 + ["WARN"] * 2 + ["ERROR"]
    rows = []
    for n in range(lines):
        level = rng.choice(levels)
        rows.append(f"2024-05-01T12:{n // 60 % 60:02d}:{n % 60:02d} {level} worker-{n % 8} "
                    f"request {n} handled")
    return "\n".join(rows)


def repl(code: str) -> str:
    """A model reply made of one ```repl block."""
    return f"```repl\n{code}\n```"


# What a model might write, turn by turn.  Turn 1 looks at the data; turn 2 counts with
# plain Python and submits the answer with FINAL.
SCRIPT = [
    "Let me look at the input first.\n"
    + repl("print(len(context))\nprint(context[:200])"),
    "It is a log with one entry per line. I will count the ERROR lines.\n"
    + repl("errors = [line for line in context.splitlines() if ' ERROR ' in line]\n"
           "print(len(errors), errors[:2])\n"
           "FINAL(f'{len(errors)} ERROR lines')"),
]


def main() -> None:
    log = make_log()
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": SCRIPT, "cost_per_call": 0.001},  # USD per call
        max_budget=0.10,  # USD for the whole call tree
    )
    with rlm:
        result = rlm.completion("How many ERROR lines are in this log?", context=log)

    expected = sum(1 for line in log.splitlines() if " ERROR " in line)
    print(f"input:       {len(log):,} characters")
    print(f"response:    {result.response}")
    print(f"expected:    {expected} ERROR lines")
    print(f"stop_reason: {result.stop_reason}")
    print(f"iterations:  {result.iterations}")
    print(f"cost_usd:    {result.cost_usd:.4f}")
    for model, usage in result.usage.items():
        print(f"usage[{model}]: {usage.calls} calls, {usage.input_tokens} tokens in, "
              f"{usage.output_tokens} tokens out")


if __name__ == "__main__":
    main()
