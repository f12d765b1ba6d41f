"""A load test of ``rlm serve``: many concurrent chat completions on a scripted model.

Starts ``rlm serve`` as a subprocess on 127.0.0.1 with one scripted profile (each LM
call takes ``--latency`` seconds and costs $0.001; each request needs ``--turns`` turns),
fires ``--requests`` requests at once from one asyncio client, and prints throughput,
p50/p99 latency, the server's peak memory (VmHWM), errors, and whether every run stayed
within its budget (half the requests get a ``max_budget`` too small for every turn, so
they stop on ``budget``; none may spend more than it was given).

    python benchmarks/serve_load.py [--requests 100] [--latency 0.2] [--turns 3] [--stream]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

COST_PER_CALL = 0.001


def _config(root: Path, latency_s: float, turns: int) -> Path:
    replies = [f"```repl\nstep_{i} = {i}\n```" for i in range(turns - 1)]
    replies.append("```repl\nFINAL(len(context))\n```")
    (root / "script.json").write_text(json.dumps(replies), encoding="utf-8")
    config = root / "load.toml"
    config.write_text(f"""
[profiles.load]
backend = "scripted"
script = "script.json"
max_budget = 1.0
backend_options = {{ latency_s = {latency_s}, cost_per_call = {COST_PER_CALL} }}
""", encoding="utf-8")
    return config


def _start(root: Path, config: Path, concurrent: int) -> tuple[subprocess.Popen[bytes], str]:
    log = root / "server.log"
    env = {**os.environ, "RLM_USER_PATH": str(root / "home")}
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "rlm.cli", "serve", "--config", str(config), "--port", "0",
             "--trace-dir", str(root / "traces"), "--max-concurrent", str(concurrent),
             "--log-level", "warning"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=handle, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())
        if found:
            try:
                httpx.get(f"{found.group(1)}/healthz", timeout=2)
                return process, found.group(1)
            except httpx.HTTPError:
                pass
        if process.poll() is not None:
            raise SystemExit("the server exited:\n" + log.read_text())
        time.sleep(0.05)
    process.kill()
    raise SystemExit("the server did not start:\n" + log.read_text())


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _one(client: httpx.AsyncClient, index: int, budget: float | None,
               stream: bool) -> dict:
    body = {"model": "load", "stream": stream, "context": "x" * (100 + index),
            "messages": [{"role": "user", "content": "How long is the context?"}]}
    if budget is not None:
        body["limits"] = {"max_budget": budget}
    started = time.perf_counter()
    if not stream:
        response = await client.post("/v1/chat/completions", json=body)
        latency = time.perf_counter() - started
        if response.status_code != 200:
            return {"error": f"HTTP {response.status_code}: {response.text[:200]}"}
        data = response.json()
        return {"latency_s": latency, "answer": data["choices"][0]["message"]["content"],
                "rlm": data["rlm"], "expected": str(100 + index)}
    answer, extension = [], None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            return {"error": f"HTTP {response.status_code}"}
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices", []):
                answer.append(choice["delta"].get("content") or "")
            if "usage" in chunk:  # the last chunk: usage and the rlm object
                extension = chunk.get("rlm")
    return {"latency_s": time.perf_counter() - started, "answer": "".join(answer),
            "rlm": extension, "expected": str(100 + index)}


async def _load(url: str, requests: int, turns: int, stream: bool) -> tuple[list, float]:
    tight = COST_PER_CALL * (turns - 1)  # one call short of an answer: stops on "budget"
    limits = httpx.Limits(max_connections=requests + 10, max_keepalive_connections=requests)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(
            _one(client, i, tight if i % 2 else None, stream) for i in range(requests)),
            return_exceptions=True)
        return list(results), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per LM call")
    parser.add_argument("--turns", type=int, default=3, help="LM calls per answered request")
    parser.add_argument("--stream", action="store_true", help="stream every response")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        process, url = _start(root, _config(root, args.latency, args.turns), args.requests)
        try:
            results, wall = asyncio.run(_load(url, args.requests, args.turns, args.stream))
            idle = httpx.get(f"{url}/healthz").json()["active_runs"]
            peak = _peak_rss_mb(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=20)
        traces = len(list((root / "traces").glob("*.jsonl")))
    errors = [r for r in results if isinstance(r, BaseException) or "error" in r]
    done = [r for r in results if not isinstance(r, BaseException) and "error" not in r]
    latencies = sorted(r["latency_s"] for r in done)
    stops: dict[str, int] = {}
    over_budget = wrong = 0
    for r in done:
        ext = r["rlm"]
        stops[ext["stop_reason"]] = stops.get(ext["stop_reason"], 0) + 1
        over_budget += ext["cost_usd"] > ext["limits"]["max_budget"] + 1e-9
        wrong += ext["stop_reason"] == "final" and r["answer"] != r["expected"]
    floor = args.latency * args.turns
    print(f"rlm serve load: {args.requests} concurrent requests, {args.turns} turns of "
          f"{args.latency * 1000:.0f} ms each ({floor:.1f} s per answered request at best)"
          f"{', streamed' if args.stream else ''}")
    print(f"  wall {wall:.2f} s · throughput {len(done) / wall:.1f} req/s")
    answered = sorted(r["latency_s"] for r in done if r["rlm"]["stop_reason"] == "final")
    for label, values in (("all", latencies), ("answered", answered)):
        if values:
            p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
            print(f"  latency ({label}, {len(values)}) p50 {statistics.median(values):.3f} s"
                  f" · p99 {p99:.3f} s · max {values[-1]:.3f} s")
    print(f"  server peak RSS {peak:.0f} MB · traces written {traces}")
    print(f"  errors {len(errors)} · stop reasons {stops} · wrong answers {wrong}")
    print(f"  runs over their budget: {over_budget} · runs still active after: {idle}")
    for error in errors[:3]:
        print(f"  error: {error}")
    if errors or over_budget or wrong or idle:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
