"""Calls made against calls affordable under ``max_budget``.

One RLM run against the fake OpenAI-compatible server (``tests/fakes/openai_server.py``):
the root's single turn sends ``--calls`` ``llm_query`` sub-calls, in one batch
(``--mode batch``) or one after another (``--mode serial``), each a short prompt with a
short reply.  ``max_budget`` is set to what the root turn and ``--fit`` of those calls
really cost; the table prints how many were answered and whether the run overspent.
``--before`` replays the ledger as it was before the fix: every call without
``max_output_tokens`` reserved 1,024 output tokens, and a call that did not fit was refused
at once even while refunds were on their way.

    PYTHONPATH=. .venv/bin/python benchmarks/budget_fill.py [--calls 50] [--fit 50] [--before]
"""

from __future__ import annotations

import argparse
import json

from rlm import RLM
from rlm.core.limits import Budget
from tests.fakes.openai_server import FakeOpenAIServer

PRICE = (1.0, 4.0)  # USD per million input / output tokens
PROMPT = "Name one colour of this text. " + "lorem ipsum " * 160


def _code(calls: int, mode: str) -> str:
    prompts = f"[{PROMPT!r} + str(i) for i in range({calls})]"
    if mode == "batch":
        body = f"out = llm_query_batched({prompts})"
    else:
        body = f"out = []\nfor p in {prompts}:\n    out.append(llm_query(p))"
    return f"```repl\n{body}\nFINAL(str(len(out)))\n```"


def _options(url: str, model: str) -> dict:
    return {"backend": "openai", "model": model, "base_url": url, "price_per_mtok": PRICE}


def run(calls: int, fit: int, mode: str) -> dict:
    """One probe: the budget fits the root turn and ``fit`` sub-calls."""
    code = _code(calls, mode)
    with FakeOpenAIServer(reply=lambda body: code if body["model"] == "root" else "blue") \
            as fake:
        def rlm(budget: float | None) -> RLM:
            return RLM(backend=_options(fake.url, "root"), sub_backend=_options(fake.url, "sub"),
                       max_iterations=2, max_budget=budget)

        # a run without a budget measures what the root turn and each sub-call cost
        with rlm(None) as free:
            dry = free.completion("Go.")
        root, sub = dry.usage["root"], dry.usage["sub"]
        assert sub.calls == calls, dry.usage
        budget = root.cost_usd + fit * (sub.cost_usd / calls) * (1 + 1e-9)
        fake.reset()
        with rlm(budget) as bounded:
            result = bounded.completion("Go.")
        made = sum(1 for r in fake.requests if r.body["model"] == "sub")
    return {"mode": mode, "affordable": fit, "made": made, "budget_usd": budget,
            "spent_usd": result.cost_usd, "overspent": result.cost_usd > budget + 1e-12,
            "stop_reason": result.stop_reason}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--fit", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--before", action="store_true", help="the ledger before the fix")
    args = parser.parse_args()
    if args.before:
        reserve = Budget.reserve
        Budget.output_allowance = lambda self, key: 1024  # type: ignore[method-assign]
        Budget.reserve = lambda self, cost, tokens, wait=False: reserve(  # type: ignore
            self, cost, tokens, wait=False)
    rows = []
    for mode in ("serial", "batch"):
        rows.append(run(args.calls, args.fit, mode))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'mode':<7} {'affordable':>10} {'made':>5} {'budget $':>10} {'spent $':>10} "
          f"{'overspent':>9}  stop")
    for r in rows:
        print(f"{r['mode']:<7} {r['affordable']:>10} {r['made']:>5} {r['budget_usd']:>10.6f} "
              f"{r['spent_usd']:>10.6f} {r['overspent']!s:>9}  {r['stop_reason']}")


if __name__ == "__main__":
    main()
