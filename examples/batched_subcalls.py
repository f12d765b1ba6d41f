"""Map over chunks with ``llm_query_batched``: one sub-model call per chunk, concurrently.

The root model splits ``context`` into chunks and asks a sub-model about each chunk with
``llm_query_batched``.  The calls run in parallel (up to ``max_concurrency``) and the
answers come back in the order of the prompts.

Two scripted backends stand in for real models:

- the root model is a list of replies (its ```repl blocks);
- the sub-model is a *callable* ``reply(messages, depth)`` that reads the prompt it is
  given and answers it, like a real model would.  It takes 0.2 s per call, so you can see
  that 10 calls finish in about 0.2 s, not 2 s.

``sub_backend`` sends every call below the root to the sub-model, and ``result.usage``
reports each model separately.

Run it with::

    python examples/batched_subcalls.py
"""

from __future__ import annotations

import re
import time

from rlm import RLM, Message, ScriptedBackend

CITIES = ["Lisbon", "Oslo", "Nairobi", "Lima", "Osaka", "Quito", "Perth", "Tunis", "Riga",
          "Hanoi"]


def make_book() -> str:
    """Ten chapters of filler text; each chapter mentions the city its hero travels to."""
    chapters = []
    for n, city in enumerate(CITIES, 1):
        filler = f"The road was long and the weather changed often in chapter {n}. " * 400
        chapters.append(f"CHAPTER {n}\n{filler}\nAt last the hero reached {city}.\n{filler}")
    return "\n".join(chapters)


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


ROOT_SCRIPT = [
    "The book is long. I will split it by chapter and ask a sub-model about each one.\n"
    + repl(
        "chapters = context.split('CHAPTER ')[1:]\n"
        "print(len(chapters), 'chapters, sizes:', [len(c) for c in chapters[:3]], '...')\n"
        "prompts = ['Which city does the hero reach in this text? Answer with the city only.'\n"
        "           '\\n\\n' + chapter for chapter in chapters]\n"
        "cities = llm_query_batched(prompts)\n"
        "print(cities)"
    ),
    "I have one city per chapter, in order.\n"
    + repl("FINAL(' -> '.join(cities))"),
]


def sub_model(messages: list[Message], depth: int) -> str:
    """A stand-in for a small model: finds 'reached <City>' in the prompt it is given."""
    prompt = messages[-1]["content"]
    match = re.search(r"reached (\w+)", prompt)
    return match.group(1) if match else "unknown"


def main() -> None:
    root = ScriptedBackend(ROOT_SCRIPT, model="root-model", cost_per_call=0.01)
    sub = ScriptedBackend(sub_model, model="sub-model", cost_per_call=0.001, latency_s=0.2)
    book = make_book()
    started = time.monotonic()
    with RLM(backend=root, sub_backend=sub, max_concurrency=16) as rlm:
        result = rlm.completion("List the cities the hero visits, in order.", context=book)
    elapsed = time.monotonic() - started
    root.close()
    sub.close()

    print(f"input:       {len(book):,} characters")
    print(f"response:    {result.response}")
    print(f"stop_reason: {result.stop_reason}")
    print(f"elapsed:     {elapsed:.2f}s for {result.usage['sub-model'].calls} sub-calls "
          f"of 0.2s each")
    for model, usage in sorted(result.usage.items()):
        print(f"usage[{model}]: {usage.calls} calls, ${usage.cost_usd:.3f}")
    print(f"cost_usd:    {result.cost_usd:.3f}")


if __name__ == "__main__":
    main()
