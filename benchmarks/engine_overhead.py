"""Per-iteration engine overhead on the scripted backend, against a bare loop.

The bare loop does the same work without the engine: call the backend, find the code,
exec it.  The ratio says how much the engine (limits, tracing, prompts, capture) adds.

    python benchmarks/engine_overhead.py [--iterations 200]
"""

from __future__ import annotations

import argparse
import re
import time

from rlm import RLM
from rlm.backends.scripted import ScriptedBackend
from rlm.types import CompletionRequest

CODE = "total = sum(range(100))\nprint(total)"
REPLY = f"Step.\n```repl\n{CODE}\n```"


def engine(iterations: int, tmp_trace: str | None) -> float:
    replies = [REPLY] * (iterations - 1) + ["```repl\nFINAL('done')\n```"]
    rlm = RLM(backend="scripted", backend_kwargs={"responses": replies},
              max_iterations=iterations, trace=tmp_trace)
    started = time.perf_counter()
    result = rlm.completion("x" * 10_000)
    elapsed = time.perf_counter() - started
    assert result.iterations == iterations, result.stop_reason
    return elapsed


def bare(iterations: int) -> float:
    backend = ScriptedBackend([REPLY] * iterations)
    messages = [{"role": "user", "content": "x" * 10_000}]
    namespace: dict = {}
    started = time.perf_counter()
    for _ in range(iterations):
        text = backend.complete(CompletionRequest(messages=list(messages))).text
        code = re.search(r"```repl\n(.*?)\n```", text, re.S).group(1)
        exec(code, namespace)
        messages.append({"role": "assistant", "content": text})
        messages.append({"role": "user", "content": "ok"})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args()
    import contextlib
    import io
    import tempfile

    n = args.iterations
    with contextlib.redirect_stdout(io.StringIO()):
        base = min(bare(n) for _ in range(3))
    ours = min(engine(n, None) for _ in range(3))
    with tempfile.TemporaryDirectory() as tmp:
        traced = min(engine(n, f"{tmp}/t{i}.jsonl") for i in range(3))
    print(f"iterations per run:              {n}")
    print(f"bare loop per iteration:         {base / n * 1e3:.3f} ms")
    print(f"engine per iteration (no trace): {ours / n * 1e3:.3f} ms  "
          f"(ratio {ours / base:.1f}x, overhead {(ours - base) / n * 1e3:.3f} ms)")
    print(f"engine per iteration (JSONL):    {traced / n * 1e3:.3f} ms  "
          f"(ratio {traced / base:.1f}x)")


if __name__ == "__main__":
    main()
