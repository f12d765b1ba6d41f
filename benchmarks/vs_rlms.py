"""Engine overhead of this project against the reference implementation, ``rlms`` 0.1.3.

Both engines drive the same fake OpenAI-compatible server (``tests/fakes/openai_server.py``
on 127.0.0.1) with the same latency model and the same scripted trajectories, each in its
own process and its own virtual environment (``rlms`` is installed from PyPI into
``~/.cache/rlm-bench/rlms-venv`` if that venv is missing; no ``rlms`` code lives in this
repository).  Run from the repository root:

    PYTHONPATH=. .venv/bin/python benchmarks/vs_rlms.py [--reps 3] [--context-gib 1]

Latency model (the fake server sleeps before answering): every RLM turn (a request whose
first message is a system prompt) takes 20 ms; every plain sub-call (``llm_query``, or
``rlm_query`` at the last level) takes 200 ms.  The fake server's sockets get
``TCP_NODELAY`` (see below), otherwise each answer would also wait ~40 ms for a delayed ACK.

The scripted trajectories (the server's reply depends only on the request):

- ``iterations``: N turns; turns 1..N-1 run ``total = sum(range(100)); print(total)``,
  turn N submits ``done``.  Per-iteration overhead is the slope of the completion time
  between N=10 and N=100, minus the 20 ms turn latency.
- ``batched``: one turn that runs ``llm_query_batched`` over 100 prompts (200 ms each)
  and submits how many answers came back.  Both engines run 16 calls at a time (ours:
  ``max_concurrency=16``; rlms: its fixed ``batch_max_concurrent=16``), so the floor is
  20 ms + 7 waves x 200 ms = 1.42 s.
- ``tree``: ``max_depth=3``.  Every RLM node spends turn 1 probing ``context`` and in
  turn 2 calls ``rlm_query_batched`` on 3 prompts ``LEVEL<d+1> ...``; at depth 2 these
  fall back to plain calls.  13 RLM nodes, 26 turns, 27 plain calls; floor 0.32 s.
- ``context``: a 1 GiB ``str`` context (64-byte log lines); one turn answers
  ``len(context)`` and the last line's tail.  Time and peak RSS of the driver process.
- ``trace``: the ``iterations`` script with tracing on (ours: ``trace_path`` JSONL;
  rlms: ``RLMLogger(log_dir=...)`` JSONL); file size against N.
- ``limits`` (probes, one run each): the ``batched`` script with 1 s sub-calls under
  ``max_timeout=2``, and with 200 ms sub-calls under ``max_budget=0.102`` (the server
  reports 100 + 100 tokens and ``usage.cost`` = $0.002 per call, which is what rlms reads;
  ours gets the same price through ``price_per_mtok=(10, 10)``): the budget covers the
  root turn and 50 of the 100 sub-calls.  And ``max_depth=0`` on a 1 MiB context.

Each measured ``completion()`` runs in a fresh driver process after an untimed warm-up
completion (1 turn) in the same process, so one-time imports are reported apart ("cold
start").  Each measurement is repeated ``--reps`` times (engine order alternating) and
the median is shown; the driver also reports its own CPU time (``getrusage``), which
is steadier than wall time on a shared machine.

The two engines end a run differently (ours: ``FINAL(x)``; rlms 0.1.3:
``answer["content"] = x; answer["ready"] = True``) and pass a child's input differently
(ours: ``rlm_query(prompt, context=...)``; rlms: the prompt *is* the child's context),
so the scripted code tries ours' form and falls back to rlms' on ``NameError`` /
``TypeError``: both engines receive byte-identical replies.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fakes.openai_server import FakeOpenAIServer

# The fake server sets TCP_NODELAY itself (see its handler), so its latency model is
# exactly what the script sleeps; nothing to adjust here.

REPO = Path(__file__).resolve().parent.parent
DRIVER = REPO / "benchmarks" / "vs_rlms_driver.py"
OURS_PYTHON = REPO / ".venv" / "bin" / "python"
RLMS_VERSION = "0.1.3"
DEFAULT_RLMS_VENV = Path.home() / ".cache" / "rlm-bench" / "rlms-venv"

TURN_LATENCY_S = 0.020
SUB_LATENCY_S = 0.200
LEAF_REPLY = "leaf-ok"
WARMUP = "WARMUP: answer at once."  # as in vs_rlms_driver.py

# -- the scripted trajectories (identical bytes for both engines) ---------------------------

FINISH = """try:
    FINAL(ans)
except NameError:  # rlms 0.1.3 has no FINAL(): it ends on answer["ready"] = True
    answer["content"] = ans
    answer["ready"] = True"""

STEP = "```repl\ntotal = sum(range(100))\nprint(total)\n```"
DONE = f"```repl\nans = 'done'\n{FINISH}\n```"
BATCH = f"""```repl
prompts = [f"item {{i}}: answer briefly" for i in range(100)]
replies = llm_query_batched(prompts)
ans = str(sum(r == {LEAF_REPLY!r} for r in replies))
{FINISH}
```"""
PROBE = "```repl\nprint(type(context).__name__, len(context))\n```"
RECURSE = f"""```repl
import re
m = re.match(r"LEVEL(\\d+)", context if isinstance(context, str) else "")
level = int(m.group(1)) if m else 0
prompts = [f"LEVEL{{level + 1}} part {{i}}" for i in range(3)]
try:
    parts = rlm_query_batched(prompts, contexts=prompts)  # ours: an explicit context
except TypeError:
    parts = rlm_query_batched(prompts)  # rlms: the prompt becomes the child's context
ans = f"L{{level}}(" + ",".join(parts) + ")"
{FINISH}
```"""
BIG = f"```repl\nans = f'{{len(context)}}:{{context[-12:-1]}}'\n{FINISH}\n```"


def turn_number(body: dict[str, Any]) -> int | None:
    """The turn of an RLM node (1, 2, ...), or None for a plain sub-call."""
    messages = body.get("messages") or []
    if not messages or messages[0].get("role") != "system":
        return None
    return 1 + sum(1 for m in messages if m.get("role") == "assistant")


def is_warmup(body: Any) -> bool:
    """The driver's untimed 1-turn warm-up completion (see ``vs_rlms_driver.py``)."""
    messages = body.get("messages") if isinstance(body, dict) else None
    return any(WARMUP in str(m.get("content")) for m in messages or [])


def script(scenario: str, iterations: int = 1, sub_latency_s: float = SUB_LATENCY_S
           ) -> Callable[[dict[str, Any]], str]:
    def reply(body: dict[str, Any]) -> str:
        if is_warmup(body):
            return DONE
        turn = turn_number(body)
        time.sleep(sub_latency_s if turn is None else TURN_LATENCY_S)
        if turn is None:
            return LEAF_REPLY
        if scenario in ("iterations", "trace"):
            return STEP if turn < iterations else DONE
        if scenario in ("batched", "timeout", "budget"):
            return BATCH
        if scenario == "tree":
            return PROBE if turn == 1 else RECURSE
        if scenario == "context":
            return BIG
        raise ValueError(scenario)

    return reply


def tree_answer(level: int = 0, max_depth: int = 3) -> str:
    if level + 1 >= max_depth:
        return f"L{level}(" + ",".join([LEAF_REPLY] * 3) + ")"
    return f"L{level}(" + ",".join(tree_answer(level + 1) for _ in range(3)) + ")"


class CostingServer(FakeOpenAIServer):
    """The fake server, also reporting a fixed ``usage.cost`` per call (as OpenRouter does)."""

    def __init__(self, *args: Any, cost_usd: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cost_usd = cost_usd

    def _completion(self, body: dict[str, Any], text: str, usage: Any) -> dict[str, Any]:
        data = super()._completion(body, text, usage)
        data["usage"]["cost"] = self.cost_usd
        return data


# -- the rlms venv --------------------------------------------------------------------------

def ensure_rlms_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import importlib.metadata as m; print(m.version('rlms'))"]
    if python.exists():
        found = subprocess.run(check, capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip() == RLMS_VERSION:
            return python
    print(f"creating {venv} with rlms=={RLMS_VERSION} ...", flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"rlms=={RLMS_VERSION}"],
                   check=True)
    found = subprocess.run(check, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == RLMS_VERSION, found.stdout
    return python


# -- one run --------------------------------------------------------------------------------

def run_one(python: Path, engine: str, scenario: str, server: FakeOpenAIServer,
            **spec: Any) -> dict[str, Any]:
    trace_dir = tempfile.mkdtemp(prefix=f"vs-rlms-{engine}-") if scenario == "trace" else None
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OPENAI_API_KEY")}
    started = time.perf_counter()
    try:
        with server:
            full = {"engine": engine, "scenario": scenario, "url": server.url,
                    "trace_dir": trace_dir, **spec}
            proc = subprocess.run([str(python), str(DRIVER), json.dumps(full)], env=env,
                                  capture_output=True, text=True, timeout=900, cwd=REPO)
            requests = sum(1 for r in server.requests if not is_warmup(r.body))
    finally:
        if trace_dir:
            shutil.rmtree(trace_dir, ignore_errors=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("VS_RLMS_RESULT ")]
    if not lines:
        return {"engine": engine, "scenario": scenario, "requests": requests,
                "error": f"driver exited {proc.returncode}: {proc.stderr[-800:]}",
                "process_s": time.perf_counter() - started}
    out = json.loads(lines[-1][len("VS_RLMS_RESULT "):])
    out["requests"] = requests
    out["process_s"] = time.perf_counter() - started
    return out


def new_server(scenario: str, iterations: int = 1, cost_usd: float | None = None,
               sub_latency_s: float = SUB_LATENCY_S) -> FakeOpenAIServer:
    reply = script(scenario, iterations, sub_latency_s)
    if cost_usd is not None:
        return CostingServer(reply, cost_usd=cost_usd, usage=(100, 100))
    return FakeOpenAIServer(reply)


# -- the whole comparison -------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--context-gib", type=float, default=1.0)
    parser.add_argument("--rlms-venv", type=Path, default=DEFAULT_RLMS_VENV)
    parser.add_argument("--json", type=Path, help="also write every raw run here")
    args = parser.parse_args()

    pythons = {"ours": OURS_PYTHON, "rlms": ensure_rlms_venv(args.rlms_venv)}
    runs: list[dict[str, Any]] = []

    def measure(key: str, scenario: str, expect: str | None, server_args: dict[str, Any],
                reps: int, **spec: Any) -> None:
        for rep in range(reps):
            order = ["ours", "rlms"] if rep % 2 == 0 else ["rlms", "ours"]
            for engine in order:
                out = run_one(pythons[engine], engine, scenario,
                              new_server(scenario, **server_args), **spec)
                out["key"], out["rep"] = key, rep
                out["ok"] = expect is None or out.get("response") == expect
                runs.append(out)
                status = "ok" if out["ok"] and "error" not in out else "FAILED"
                print(f"  {key:14} {engine:4} rep {rep + 1}: "
                      f"{out.get('completion_s', float('nan')):8.3f} s  "
                      f"{out['requests']:4} requests  {status}"
                      + (f"  {out.get('error') or repr(out.get('response'))[:80]}"
                         if status != "ok" else ""), flush=True)

    print(f"ours: {pythons['ours']}\nrlms {RLMS_VERSION}: {pythons['rlms']}", flush=True)
    for n in (10, 100):
        measure(f"iterations/{n}", "iterations", "done", {"iterations": n}, args.reps,
                max_iterations=n + 5)
    measure("batched", "batched", "100", {}, args.reps)
    measure("tree", "tree", tree_answer(), {}, args.reps, max_depth=3, max_iterations=100)
    gib = args.context_gib
    size = int(gib * (1 << 30)) // 64 * 64
    measure("context", "context", f"{size}:(cache hit)", {}, args.reps, context_gib=gib)
    for n in (10, 50, 100):
        measure(f"trace/{n}", "trace", "done", {"iterations": n}, 1, max_iterations=n + 5)
    # Sub-calls of 1 s here: the batch needs 7 s or more, the limit is 2 s.
    measure("timeout", "timeout", None, {"sub_latency_s": 1.0}, 1, max_timeout=2.0)
    # 100 tokens in + 100 out per call at $10/Mtok each = $0.002 a call; the budget covers
    # the root turn and 50 of the 100 sub-calls.
    measure("budget", "budget", None, {"cost_usd": 0.002}, 1,
            max_budget=0.102, price_per_mtok=[10.0, 10.0])
    # max_depth=0: rlms accepts it and returns a bare str from completion(); ours refuses.
    measure("max_depth=0", "context", None, {}, 1, context_gib=1 / 1024, max_depth=0)

    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    report(runs, gib)


def med(runs: list[dict[str, Any]], key: str, engine: str, field: str) -> float:
    """Median over the runs that returned (a wrong answer is reported apart, not dropped)."""
    values = [r[field] for r in runs if r["key"] == key and r["engine"] == engine
              and field in r and "error" not in r]
    return statistics.median(values) if values else float("nan")


def report(runs: list[dict[str, Any]], gib: float) -> None:
    rows: list[tuple[str, float, float, str]] = []

    def row(label: str, ours: float, theirs: float, unit: str) -> None:
        rows.append((label, ours, theirs, unit))

    t = {e: {n: med(runs, f"iterations/{n}", e, "completion_s") for n in (10, 100)}
         for e in ("ours", "rlms")}
    for e in ("ours", "rlms"):
        t[e]["slope"] = (t[e][100] - t[e][10]) / 90 - TURN_LATENCY_S
    row("per-iteration overhead (slope 10->100 turns, minus 20 ms)",
        t["ours"]["slope"] * 1e3, t["rlms"]["slope"] * 1e3, "ms")
    c = {e: {n: med(runs, f"iterations/{n}", e, "cpu_s") for n in (10, 100)}
         for e in ("ours", "rlms")}
    row("per-iteration engine CPU (slope 10->100 turns)",
        (c["ours"][100] - c["ours"][10]) / 90 * 1e3,
        (c["rlms"][100] - c["rlms"][10]) / 90 * 1e3, "ms")
    row("10-turn run, wall", t["ours"][10], t["rlms"][10], "s")
    row("100-turn run, wall", t["ours"][100], t["rlms"][100], "s")
    row("100 x 200 ms batched sub-calls, wall (floor 1.42 s)",
        med(runs, "batched", "ours", "completion_s"),
        med(runs, "batched", "rlms", "completion_s"), "s")
    row("depth-3 tree (13 nodes, 27 leaves), wall (floor 0.32 s)",
        med(runs, "tree", "ours", "completion_s"), med(runs, "tree", "rlms", "completion_s"),
        "s")
    row("depth-3 tree, driver CPU", med(runs, "tree", "ours", "cpu_s"),
        med(runs, "tree", "rlms", "cpu_s"), "s")
    row(f"{gib:g} GiB context, wall", med(runs, "context", "ours", "completion_s"),
        med(runs, "context", "rlms", "completion_s"), "s")
    row(f"{gib:g} GiB context, peak RSS", med(runs, "context", "ours", "peak_rss_mib"),
        med(runs, "context", "rlms", "peak_rss_mib"), "MiB")
    extra = {e: med(runs, "context", e, "peak_rss_mib") - med(runs, "context", e,
                                                               "rss_before_mib")
             for e in ("ours", "rlms")}
    row(f"{gib:g} GiB context, peak RSS above the input", extra["ours"], extra["rlms"], "MiB")
    for n in (10, 50, 100):
        row(f"trace file, {n} turns", med(runs, f"trace/{n}", "ours", "trace_bytes") / 1024,
            med(runs, f"trace/{n}", "rlms", "trace_bytes") / 1024, "KiB")

    width = max(len(r[0]) for r in rows)
    print()
    print(f"| {'measure':{width}} | {'ours':>10} | {'rlms 0.1.3':>10} | {'ours/rlms':>9} |")
    print(f"| {'-' * width} | {'-' * 10}:| {'-' * 10}:| {'-' * 9}:|")
    for label, ours, theirs, unit in rows:
        ratio = ours / theirs if theirs and theirs == theirs else float("nan")
        digits = 3 if unit == "s" else 1
        a, b = f"{ours:.{digits}f} {unit}", f"{theirs:.{digits}f} {unit}"
        print(f"| {label:{width}} | {a:>10} | {b:>10} | {ratio:>8.2f}x |")

    print("\nCorrectness, request counts and limit probes:")
    for key in dict.fromkeys(r["key"] for r in runs):
        for engine in ("ours", "rlms"):
            mine = [r for r in runs if r["key"] == key and r["engine"] == engine]
            reqs = sorted({r["requests"] for r in mine})
            if key in ("timeout", "budget", "max_depth=0"):
                r = mine[-1]
                print(f"  {key:14} {engine:4}: {r.get('completion_s', float('nan')):.3f} s, "
                      f"{r['requests']} requests, stop={r.get('stop')}, "
                      f"response={str(r.get('response'))[:60]!r}"
                      + (f", error={r.get('error')}" if r.get("error") else ""))
                continue
            bad = [r for r in mine if not r["ok"] or "error" in r]
            print(f"  {key:14} {engine:4}: {len(mine) - len(bad)} of {len(mine)} runs "
                  f"correct, requests {reqs}")
            for r in bad:
                print(f"  {'':14} {engine:4}  rep {r['rep'] + 1}: "
                      f"{r.get('error') or repr(r.get('response'))[-240:]}")
    cold = {e: med(runs, "iterations/10", e, "import_s") + med(runs, "iterations/10", e,
                                                                "warmup_s")
            for e in ("ours", "rlms")}
    print(f"\nCold start (import + first 1-turn completion, median of the iterations/10 "
          f"runs): ours {cold['ours']:.3f} s, rlms {cold['rlms']:.3f} s, "
          f"ratio {cold['ours'] / cold['rlms']:.2f}x")

if __name__ == "__main__":
    main()
