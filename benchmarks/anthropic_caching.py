"""What prompt caching saves on an RLM run over the Anthropic Messages API.

A 10-turn run (each turn prints a 2,000-character slice of the context, the last one
answers) against the fake Messages API (``tests/fakes/anthropic_server.py``, which caches
as the API documents, with its 1,024-token minimum), through the official SDK, with
``prompt_caching`` on and off.  It prints the input tokens of every turn as billed (plain,
cache writes, cache reads) and what they cost at claude-sonnet-4's prices: writes at 1.25
times the input price, reads at 0.1 times.

    PYTHONPATH=. .venv/bin/python benchmarks/anthropic_caching.py [--turns 10]
"""

from __future__ import annotations

import argparse

from rlm import RLM
from rlm.backends.prices import lookup
from tests.fakes.anthropic_server import FakeAnthropicServer

CONTEXT = "".join(f"record {i}: value {i * 7 % 100}\n" for i in range(5_000))


def run(turns: int, caching: bool) -> dict:
    replies = [f"```repl\nprint(context[{i * 2000}:{(i + 1) * 2000}])\n```"
               for i in range(turns - 1)] + ["```repl\nFINAL('done')\n```"]
    with FakeAnthropicServer(min_cache_tokens=1024) as fake:
        fake.reply = lambda body: replies[min(len(fake.usages), turns - 1)]
        with RLM(backend="anthropic", backend_kwargs={
                "model": "claude-sonnet-4", "api_key": "sk-ant-bench",
                "base_url": fake.base_url, "prompt_caching": caching},
                max_iterations=turns + 1) as rlm:
            result = rlm.completion("Look through the records.", context=CONTEXT)
        usages = list(fake.usages)
    plain = sum(u["input_tokens"] for u in usages)
    written = sum(u["cache_creation_input_tokens"] for u in usages)
    read = sum(u["cache_read_input_tokens"] for u in usages)
    return {"caching": caching, "turns": len(usages), "plain": plain, "written": written,
            "read": read, "input": plain + written + read, "cost_usd": result.cost_usd}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10)
    args = parser.parse_args()
    price = lookup("anthropic", "claude-sonnet-4")
    assert price is not None
    rows = [run(args.turns, caching) for caching in (False, True)]
    print(f"{'caching':<8} {'turns':>5} {'input':>8} {'plain':>8} {'written':>8} "
          f"{'read':>8} {'input $':>9} {'total $':>9}")
    for r in rows:
        input_usd = (r["plain"] * price.input + r["written"] * price.write_price
                     + r["read"] * price.read_price) / 1e6
        r["input_usd"] = input_usd
        print(f"{'on' if r['caching'] else 'off':<8} {r['turns']:>5} {r['input']:>8} "
              f"{r['plain']:>8} {r['written']:>8} {r['read']:>8} {input_usd:>9.5f} "
              f"{r['cost_usd']:>9.5f}")
    off, on = rows
    print(f"input billed with caching / without: {on['input_usd'] / off['input_usd']:.2f} "
          f"(cost of the run: {on['cost_usd'] / off['cost_usd']:.2f})")


if __name__ == "__main__":
    main()
