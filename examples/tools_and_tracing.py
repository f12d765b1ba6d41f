"""Tools and traces: give the REPL your own function, record the run, read it back.

- ``tools={"name": function}`` puts ``function`` in the REPL under ``name``; its signature
  and the first line of its docstring are listed in the system prompt.  Here the REPL is
  a separate process (``environment="subprocess"``), so the function travels as its code,
  with the ``RATES`` table it reads; a tool can also be given as code directly
  (``tools={"name": "def name(...): ..."}``).
- ``trace="run.jsonl"`` appends one JSON object per event to a JSONL file (a directory
  gets one file per call).
- ``rlm.load_trace(path)`` (also ``rlm.trace.load``) rebuilds the call tree (a
  ``TraceNode``) from that file.

The scripted model converts invoices to euros with the ``eur_rate`` tool and checks one
figure with ``llm_query``.  The trace goes to a temporary folder (or to the path given as
the first argument) and is read back at the end.

Run it with::

    python examples/tools_and_tracing.py [trace.jsonl]
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

from rlm import RLM, load_trace

RATES = {"EUR": 1.0, "USD": 0.92, "GBP": 1.17}

INVOICES = [
    {"id": 1, "amount": 120.0, "currency": "USD"},
    {"id": 2, "amount": 80.0, "currency": "EUR"},
    {"id": 3, "amount": 45.5, "currency": "GBP"},
    {"id": 4, "amount": 300.0, "currency": "USD"},
]


def eur_rate(currency: str) -> float:
    """How many euros one unit of ``currency`` is worth."""
    return RATES[currency]


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


SCRIPT = [
    repl(
        "total = sum(inv['amount'] * eur_rate(inv['currency']) for inv in context)\n"
        "print(round(total, 2))"
    ),
    repl(
        "check = llm_query(f'Is {total:.2f} a plausible total? Answer yes or no.')\n"
        "FINAL(f'{total:.2f} EUR (check: {check})')"
    ),
    "yes",  # the llm_query sub-call
]


def run(path: Path) -> None:
    with RLM(backend="scripted", backend_kwargs={"responses": SCRIPT, "cost_per_call": 0.001},
             environment="subprocess", tools={"eur_rate": eur_rate},
             trace=path) as rlm:
        result = rlm.completion("What do these invoices add up to, in euros?",
                                  context=INVOICES)
    print(f"response:    {result.response}")
    print(f"stop_reason: {result.stop_reason}")

    lines = path.read_text(encoding="utf-8").splitlines()
    print(f"trace file:  {Path(result.trace_path or path).name}, {len(lines)} lines "
          "(one event per line)")
    print(f"event types: {dict(Counter(json.loads(line)['type'] for line in lines))}")

    tree = load_trace(path)  # the call tree of the last root run in the file
    assert tree.run_id == result.run_id
    print(f"loaded tree: {tree.iterations} iterations, {len(tree.children)} child runs, "
          f"response {tree.response!r}")
    for event in tree.lm_calls:
        print(f"  lm_call  purpose={event.data['purpose']:<9} "
              f"tokens={event.data['input_tokens']}+{event.data['output_tokens']} "
              f"response={event.data['response'][:40]!r}")
    for event in tree.code_executions:
        print(f"  code_exec iteration={event.iteration} stdout={event.data['stdout']!r} "
              f"error={event.data['error']!r}")


def main() -> None:
    if len(sys.argv) > 1:
        run(Path(sys.argv[1]))
        return
    with tempfile.TemporaryDirectory() as folder:
        run(Path(folder) / "trace.jsonl")


if __name__ == "__main__":
    main()
