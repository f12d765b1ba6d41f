"""Raw speed of the embedded models on this machine: load, prompt and generation rates.

Prints, per model: load time, prompt processing tokens/s (a ~2,000-token prompt),
generation tokens/s (100 tokens), the time of a follow-up turn that shares the prefix
(the KV cache at work) against the same turn in a cold lane, and peak RSS.  Run one model
per process so peak RSS is the model's own.

    python benchmarks/local_throughput.py [--model NAME] [--threads N]
"""

from __future__ import annotations

import argparse
import resource
import time

from rlm.backends.local import LocalBackend
from rlm.backends.local_models import DEFAULT_MODEL
from rlm.bench.documents import service_log
from rlm.types import CompletionRequest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    backend = LocalBackend(args.model, n_threads=args.threads, lanes=3)
    started = time.perf_counter()
    backend.warm_up()
    load_s = time.perf_counter() - started

    text = service_log(7_000, seed=3).text
    messages = [{"role": "system", "content": "You read logs."},
                {"role": "user", "content": text + "\nWhich service appears most often?"}]

    def timed(request: CompletionRequest) -> tuple[float, object]:
        t = time.perf_counter()
        result = backend.complete(request)
        return time.perf_counter() - t, result

    # prompt processing: a long prompt, one output token
    pp_s, pp = timed(CompletionRequest(messages=messages, max_output_tokens=1, cache_key="a"))
    # generation: a short prompt, 100 tokens
    gen_s, gen = timed(CompletionRequest(
        messages=[{"role": "user", "content": "Write the numbers from 1 to 200 in words."}],
        max_output_tokens=100, cache_key="b"))
    # a follow-up turn sharing the long prefix (lane "a"), against a cold lane ("c")
    follow = [*messages, {"role": "assistant", "content": "billing"},
              {"role": "user", "content": "And the least often?"}]
    warm_s, warm = timed(CompletionRequest(messages=follow, max_output_tokens=1, cache_key="a"))
    cold_s, _ = timed(CompletionRequest(messages=follow, max_output_tokens=1, cache_key="c"))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    backend.close()
    print(f"model:                 {args.model} ({backend.n_threads} threads, n_ctx "
          f"{backend.n_ctx})")
    print(f"load:                  {load_s:.2f} s")
    print(f"prompt processing:     {pp.input_tokens / pp_s:.0f} tokens/s "
          f"({pp.input_tokens} tokens in {pp_s:.1f} s)")
    print(f"generation:            {gen.output_tokens / gen_s:.1f} tokens/s "
          f"({gen.output_tokens} tokens in {gen_s:.1f} s)")
    print(f"follow-up turn:        {warm_s:.2f} s with the prefix cached "
          f"({warm.cached_input_tokens} of {warm.input_tokens} tokens) vs {cold_s:.2f} s cold "
          f"(ratio {cold_s / warm_s:.1f}x)")
    print(f"peak RSS:              {rss_mb:.0f} MB (3 lanes)")


if __name__ == "__main__":
    main()
