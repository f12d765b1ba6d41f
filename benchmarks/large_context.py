"""Loading a 100 MB string context into the local REPL: time and peak memory.

The baseline is making one copy of the same string: an engine that loads the context
without copying it adds about nothing to peak memory beyond the string itself.

    python benchmarks/large_context.py [--mb 100]
"""

from __future__ import annotations

import argparse
import resource
import time

from rlm import RLM


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=100)
    args = parser.parse_args()
    size = args.mb * 1024 * 1024
    line = "2026-01-01 INFO worker ok request served in 12 ms\n"
    text = (line * (size // len(line) + 1))[:size - 6] + "NEEDLE"
    before = rss_mb()

    replies = ["```repl\nFINAL(str(len(context)) + ':' + context[-6:])\n```"]
    rlm = RLM(backend="scripted", backend_kwargs={"responses": replies})
    started = time.perf_counter()
    result = rlm.completion("How long is it?", context=text)
    run_s = time.perf_counter() - started
    peak = rss_mb()

    started = time.perf_counter()
    copy = text[:-1] + text[-1]  # the baseline: one full copy
    copy_s = time.perf_counter() - started
    del copy
    assert result.response == f"{size}:NEEDLE", result.response
    print(f"context size:                {args.mb} MB")
    print(f"one copy of the string:      {copy_s * 1e3:.1f} ms")
    print(f"completion over the context: {run_s * 1e3:.1f} ms (ratio {run_s / copy_s:.1f}x a copy)")
    print(f"peak RSS after the string:   {peak - before:.0f} MB above the string "
          f"(one copy = {args.mb} MB)")


if __name__ == "__main__":
    main()
