"""A real model: the ``openai`` backend (needs an API key and network access).

This is the setup of the RLM paper: a root model that writes code, sub-calls one level
down (``max_depth=2`` lets the root start child RLMs), and a hard spending cap for the
whole call tree (``max_budget`` in USD).

It exits with a message, and calls nothing, when ``OPENAI_API_KEY`` is not set.  The
``openai`` backend also speaks to other OpenAI-compatible servers: pass
``backend_kwargs={"model": ..., "provider": "openrouter"}`` (or ``"groq"``, ``"vllm"``,
``"ollama"``, ``"llamacpp"``) or a ``base_url``; see ``docs/api.md``.

Run it with::

    OPENAI_API_KEY=sk-... python examples/openai_backend.py
"""

from __future__ import annotations

import os
import random
import sys

from rlm import RLM


def make_haystack(lines: int = 50_000, seed: int = 1) -> tuple[str, str]:
    """A long list of random facts with one magic number hidden in it."""
    rng = random.Random(seed)
    words = ["apple", "river", "stone", "cloud", "lamp", "forest", "engine", "violet"]
    rows = [f"{rng.choice(words)} {rng.choice(words)} {rng.randint(0, 10**6)}"
            for _ in range(lines)]
    magic = str(rng.randint(10**6, 10**7))
    rows.insert(rng.randrange(lines), f"The magic number is {magic}.")
    return "\n".join(rows), magic


def main() -> int:
    if not os.environ.get("OPENAI_API_KEY"):
        print("OPENAI_API_KEY is not set: this example calls the OpenAI API and needs a key.\n"
              "Set it and run again:  OPENAI_API_KEY=sk-... python examples/openai_backend.py\n"
              "The other examples run offline with the scripted backend.", file=sys.stderr)
        return 2

    haystack, magic = make_haystack()
    with RLM(backend="openai", backend_kwargs={"model": "gpt-5-mini"},
             max_depth=2, max_budget=2.0) as rlm:
        result = rlm.completion("What is the magic number?", context=haystack)

    print(f"response:    {result.response}")
    print(f"expected:    {magic}")
    print(f"stop_reason: {result.stop_reason}")
    print(f"iterations:  {result.iterations}")
    print(f"cost_usd:    {result.cost_usd:.4f}")
    for model, usage in result.usage.items():
        print(f"usage[{model}]: {usage.calls} calls, {usage.input_tokens} tokens in, "
              f"{usage.output_tokens} tokens out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
