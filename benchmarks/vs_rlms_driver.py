"""One measured run of one engine, for ``benchmarks/vs_rlms.py``; prints one JSON line.

Run by ``vs_rlms.py`` with the interpreter of the engine's own virtual environment:
this project's ``.venv`` for ``--engine ours``, the ``rlms`` 0.1.3 venv for
``--engine rlms``.  Both packages are imported as ``rlm``, which is why each engine gets
its own process.  Standard library only (plus the engine under test).

    python benchmarks/vs_rlms_driver.py '{"engine": "ours", "scenario": "iterations", ...}'

The spec (JSON) names the engine, the scenario, the fake server's URL, the input
(``context_chars`` or ``context_gib``), ``max_depth``, ``max_iterations``, an optional
``trace_dir`` and optional limits (``max_timeout``, ``max_budget``, ``price_per_mtok``).
The driver times ``completion()`` only (construction and a warm-up are timed apart),
and reads the CPU time and peak RSS of its own process with ``resource.getrusage``.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time
import traceback
from typing import Any

WARMUP = "WARMUP: answer at once."


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_input(spec: dict[str, Any]) -> str:
    if spec.get("context_gib"):
        line = "2026-01-01 INFO worker-7 ok request served in 12 ms (cache hit)\n"
        assert len(line) == 64
        return line * int(spec["context_gib"] * (1 << 30) // 64)  # one allocation
    return "x" * int(spec.get("context_chars", 10_000))


def build(spec: dict[str, Any]) -> Any:
    """The engine's ``RLM`` for ``spec``."""
    from rlm import RLM

    url, engine = spec["url"], spec["engine"]
    trace_dir = spec.get("trace_dir")
    limits = {k: spec[k] for k in ("max_timeout", "max_budget") if spec.get(k) is not None}
    if engine == "ours":
        backend_kwargs: dict[str, Any] = {"model": "fake", "base_url": url}
        if spec.get("price_per_mtok"):
            backend_kwargs["price_per_mtok"] = tuple(spec["price_per_mtok"])
        return RLM(backend="openai", backend_kwargs=backend_kwargs, environment="local",
                   max_depth=spec.get("max_depth", 1),
                   max_iterations=spec.get("max_iterations", 30),
                   max_concurrency=16,
                   trace=os.path.join(trace_dir, "ours.jsonl") if trace_dir else None,
                   **limits)
    from rlm.logger import RLMLogger

    return RLM(backend="openai",
               backend_kwargs={"model_name": "fake", "base_url": url, "api_key": "fake"},
               environment="local",
               max_depth=spec.get("max_depth", 1),
               max_iterations=spec.get("max_iterations", 30),
               max_concurrent_subcalls=16,  # rlm_query_batched; llm_query_batched is fixed at 16
               logger=RLMLogger(log_dir=trace_dir) if trace_dir else None,
               **limits)


def complete(rlm: Any, engine: str, question: str, data: Any) -> Any:
    if engine == "ours":
        return rlm.completion(question, context=data)
    return rlm.completion(data, root_prompt=question)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"engine": spec["engine"], "scenario": spec["scenario"]}
    question = spec.get("question", "Follow the script.")
    # Cold start, measured apart: importing the engine, then one 1-turn completion
    # (the server answers a WARMUP question at once), which pulls in the lazy imports
    # (rlms imports the openai SDK inside its first completion) and opens connections.
    started = time.perf_counter()
    importlib.import_module("rlm")

    out["import_s"] = time.perf_counter() - started
    started = time.perf_counter()
    warm = build({**spec, "trace_dir": None, "max_timeout": None, "max_budget": None,
                  "max_depth": 1})
    complete(warm, spec["engine"], WARMUP, "warm-up")
    warm.close()
    out["warmup_s"] = time.perf_counter() - started
    data = make_input(spec)
    out["rss_before_mib"] = rss_mib()
    started = time.perf_counter()
    try:
        rlm = build(spec)
    except Exception as exc:  # ours refuses some settings rlms accepts (max_depth=0)
        out["error"] = f"{type(exc).__name__} from RLM(...): {exc}"[:300]
        return out
    out["construct_s"] = time.perf_counter() - started
    started = time.perf_counter()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    try:
        result = complete(rlm, spec["engine"], question, data)
        if spec["engine"] == "ours":
            out["response"] = result.response
            out["stop"] = result.stop_reason
        else:
            # At max depth rlms returns a bare str from completion(), not a completion.
            out["response"] = result if isinstance(result, str) else result.response
            out["stop"] = "str" if isinstance(result, str) else "returned"
    except Exception as exc:  # a finding, not a crash of the benchmark
        out["error"] = f"{type(exc).__name__}: {exc}"[:300]
        out["traceback"] = traceback.format_exc()[-1500:]
    out["completion_s"] = time.perf_counter() - started
    now = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = now.ru_utime + now.ru_stime - cpu.ru_utime - cpu.ru_stime
    out["peak_rss_mib"] = rss_mib()
    del data
    if spec.get("trace_dir"):
        files = [os.path.join(spec["trace_dir"], f) for f in os.listdir(spec["trace_dir"])]
        out["trace_bytes"] = sum(os.path.getsize(f) for f in files if os.path.isfile(f))
        out["trace_files"] = len(files)
    return out


def main() -> None:
    spec = json.loads(sys.argv[1])
    out = run(spec)
    sys.stdout.flush()
    print("VS_RLMS_RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
