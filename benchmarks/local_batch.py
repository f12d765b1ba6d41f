"""Batched sub-calls on the embedded model: the shared-weights engine against the old path.

Two measurements, each in fresh processes (so a peak RSS is that run's own), for the
current ``LocalBackend`` ("new": its defaults, each reply the one it gets alone;
"fast": ``batch_exact=False, parallel=16``, every generating call in one decode call) and
for the one of ``--baseline`` ("old": a git revision of the backend whose lanes each
loaded their own ``Llama`` and whose calls queued on one lock, loaded from
``git show REV:src/rlm/backends/local.py``):

- a batch: ``--prompts`` one-shot calls (short prompts sharing a preamble, "Label this
  record: ..."), ``--tokens`` output tokens at most, sent from 16 threads as
  ``llm_query_batched`` does (the handler's ``max_concurrency``), timed after a warm-up
  call; the figures are calls/s, generated tokens/s, how many replies equal the other
  path's, and peak RSS;
- three lanes in use: a turn in each of two conversations and a one-shot call (each a
  lane of its own in the old backend), then peak RSS.

``--rounds`` repeats both (old, new, fast, old, ...) so a noisy machine shows up as
spread between rounds.  Each run waits until the CPUs are idle and prints the CPU time
other processes took while it ran; a round where that is more than a few seconds is
disturbed.  Ratios are against old within a round, their median over the rounds.

    python benchmarks/local_batch.py [--model NAME] [--threads N] [--rounds 1]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: The last revision of the lock-serialised backend (one ``Llama`` per lane).
BASELINE = "6efdf1a"
#: Other processes' CPU seconds during a batch above which its round counts as disturbed.
QUIET_CPU_S = 5.0
SERVICES = ["auth", "billing", "search", "cart", "mail"]


def records(n: int) -> list[str]:
    return [f"id={i}; service={SERVICES[i % 5]}; status={'error' if i % 3 == 0 else 'ok'}; "
            f"latency={(i * 37) % 900} ms; user=u{(i * 7) % 13}" for i in range(n)]


def backend_class(which: str, baseline: str) -> Any:
    if which in ("new", "fast"):
        from rlm.backends.local import LocalBackend

        return LocalBackend
    source = subprocess.run(["git", "show", f"{baseline}:src/rlm/backends/local.py"],
                            cwd=ROOT, check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "rlm_local_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("rlm_local_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LocalBackend


def worker(args: argparse.Namespace) -> dict[str, Any]:
    from rlm.types import CompletionRequest

    cls = backend_class(args.worker, args.baseline)
    options: dict[str, Any] = {"batch_exact": False, "parallel": 16} if (
        args.worker == "fast") else {}
    backend = cls(args.model, n_threads=args.threads, lanes=3 if args.task == "lanes" else 2,
                  **options)
    backend.warm_up()

    def ask(text: str, **kw: Any) -> Any:
        return CompletionRequest(messages=[
            {"role": "system", "content": "You label service log records. Describe the "
                                          "record in one short sentence."},
            {"role": "user", "content": text}], **kw)

    out: dict[str, Any] = {"impl": args.worker}
    if args.task == "batch":
        backend.complete(ask("Label this record: warm-up", max_output_tokens=2))
        requests = [ask(f"Label this record: {r}", max_output_tokens=args.tokens)
                    for r in records(args.prompts)]
        started = time.perf_counter()
        with cf.ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(backend.complete, requests))
        wall = time.perf_counter() - started
        out.update(wall_s=wall, texts=[r.text for r in results],
                   output_tokens=sum(r.output_tokens for r in results),
                   input_tokens=sum(r.input_tokens for r in results),
                   cached_tokens=sum(r.cached_input_tokens for r in results))
    else:
        for key in ("a", "b", None):
            backend.complete(ask(f"Label this record: {records(1)[0]}", cache_key=key,
                                 purpose="turn" if key else "query", max_output_tokens=4))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    backend.close()
    return out


def _busy_s() -> float:
    """CPU seconds the whole machine has spent busy (every process), from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    busy = sum(fields[:3]) + sum(fields[5:8])  # user nice system, irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_until_idle(limit_s: float = 900.0) -> None:
    """Wait (bounded) until other processes leave the CPUs nearly idle."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = _busy_s()
        time.sleep(2.0)
        if (_busy_s() - before) / (2.0 * (os.cpu_count() or 1)) < 0.1:
            return
        time.sleep(8.0)


def run_worker(args: argparse.Namespace, which: str, task: str) -> dict[str, Any]:
    wait_until_idle()
    busy, own = _busy_s(), _children_cpu_s()
    command = [sys.executable, __file__, "--worker", which, "--task", task,
               "--model", args.model, "--prompts", str(args.prompts), "--tokens",
               str(args.tokens), "--baseline", args.baseline]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    result = dict(json.loads(done.stdout.strip().splitlines()[-1]))
    result["others_cpu_s"] = max(0.0, (_busy_s() - busy) - (_children_cpu_s() - own))
    return result


def main() -> None:
    from rlm.backends.local_models import DEFAULT_MODEL

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--worker", choices=["old", "new", "fast"], help=argparse.SUPPRESS)
    parser.add_argument("--task", choices=["batch", "lanes"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    print(f"model {args.model}, {args.prompts} prompts x {args.tokens} tokens at most, "
          f"16 threads; baseline {args.baseline}")
    ratios: dict[str, list[float]] = {name: [] for name in (
        "new calls/s", "fast calls/s", "new batch RSS", "fast batch RSS", "new 3-lane RSS")}
    clean: list[bool] = []
    for round_ in range(1, args.rounds + 1):
        runs = {which: run_worker(args, which, "batch") for which in ("old", "new", "fast")}
        for r in runs.values():
            print(f"[{round_}] {r['impl']}: batch {r['wall_s']:.1f} s (other processes: "
                  f"{r['others_cpu_s']:.0f} CPU s during the run), "
                  f"{args.prompts / r['wall_s']:.2f} calls/s, "
                  f"{r['output_tokens'] / r['wall_s']:.1f} generated tokens/s "
                  f"({r['output_tokens']} tokens; {r['cached_tokens']} of "
                  f"{r['input_tokens']} prompt tokens cached), peak RSS "
                  f"{r['peak_rss_mb']:.0f} MB", flush=True)
        old = runs["old"]
        clean.append(all(r["others_cpu_s"] <= QUIET_CPU_S for r in runs.values()))
        for which in ("new", "fast"):
            same = sum(a == b for a, b in zip(old["texts"], runs[which]["texts"], strict=True))
            print(f"[{round_}] {which}: the old path's reply for {same} of {args.prompts}")
            ratios[f"{which} calls/s"].append(old["wall_s"] / runs[which]["wall_s"])
            ratios[f"{which} batch RSS"].append(runs[which]["peak_rss_mb"] / old["peak_rss_mb"])
        old_l, new_l = run_worker(args, "old", "lanes"), run_worker(args, "new", "lanes")
        print(f"[{round_}] 3 lanes in use: old {old_l['peak_rss_mb']:.0f} MB, new "
              f"{new_l['peak_rss_mb']:.0f} MB", flush=True)
        ratios["new 3-lane RSS"].append(new_l["peak_rss_mb"] / old_l["peak_rss_mb"])
    quiet = [i for i, ok in enumerate(clean) if ok] or list(range(len(clean)))
    print(f"undisturbed rounds: {sum(clean)} of {len(clean)} (the medians below use "
          f"{'those' if any(clean) else 'all, none being undisturbed'})")
    for name, values in ratios.items():
        print(f"{name}, against old: {statistics.median(values[i] for i in quiet):.2f}x "
              f"(rounds: {', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
