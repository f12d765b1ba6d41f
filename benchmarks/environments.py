"""Per environment: startup, per-block latency, a large context handoff, 100 concurrent
llm_query calls through the environment's protocol.

Environments that cannot start here (no engine, missing extra) are reported, not hidden.
The baseline for latency is the in-process `local` environment, measured in the same run.

    python benchmarks/environments.py [--envs local subprocess ...] [--context-mb 1024]
"""

from __future__ import annotations

import argparse
import statistics
import time

from rlm import registry

ALL = ["local", "subprocess", "sandbox", "ipython", "docker", "pyodide", "remote-local"]


def host(message: dict) -> dict:
    if message.get("op") == "llm_query":
        time.sleep(0.05)  # a fixed model latency, so the protocol's concurrency shows
        return {"text": "ok"}
    if message.get("op") == "llm_query_batched":
        return {"results": [{"text": "ok"} for _ in message["prompts"]]}
    return {"error": {"type": "BridgeProtocolError", "message": "unsupported"}}


def measure(name: str, context_mb: int) -> dict[str, str]:
    cls = registry.get_environment_class(name)
    reason = cls.unavailable_reason()
    if reason:
        return {"error": reason}
    started = time.perf_counter()
    env = registry.create_environment(name, {})
    try:
        env.start(host)
        env.set_variable("context", "small")
        env.execute("x = 1")
        startup = time.perf_counter() - started
        blocks = []
        for _ in range(30):
            t = time.perf_counter()
            env.execute("x += 1")
            blocks.append(time.perf_counter() - t)
        t = time.perf_counter()
        result = env.execute(
            "import threading\nout = []\n"
            "ts = [threading.Thread(target=lambda: out.append(llm_query('q'))) "
            "for _ in range(100)]\n"
            "[t.start() for t in ts]\n[t.join() for t in ts]\nprint(len(out))")
        concurrent = time.perf_counter() - t
        concurrent_ok = result.stdout.strip() == "100"
        big = "x" * (context_mb << 20)
        t = time.perf_counter()
        try:
            env.set_variable("context", big)
            check = env.execute("print(len(context))").stdout.strip()
            handoff = f"{time.perf_counter() - t:.2f} s" + ("" if check == str(len(big))
                                                           else f" (wrong length {check})")
        except Exception as exc:  # reported, not hidden
            handoff = f"failed: {type(exc).__name__}: {str(exc)[:60]}"
        del big
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {str(exc)[:100]}"}
    finally:
        env.close()
    return {
        "startup": f"{startup:.2f} s",
        "block": f"{statistics.median(blocks) * 1e3:.2f} ms",
        "100 llm_query": f"{concurrent:.2f} s" + ("" if concurrent_ok else " (incomplete)"),
        "context": handoff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--envs", nargs="*", default=ALL)
    parser.add_argument("--context-mb", type=int, default=1024)
    args = parser.parse_args()
    print(f"| environment | startup | block (median) | 100 concurrent llm_query (50 ms each) "
          f"| {args.context_mb} MB context handoff |")
    print("|---|---|---|---|---|")
    for name in args.envs:
        row = measure(name, args.context_mb)
        if "error" in row:
            print(f"| `{name}` | not measured: {row['error']} | | | |")
        else:
            print(f"| `{name}` | {row['startup']} | {row['block']} | {row['100 llm_query']} "
                  f"| {row['context']} |", flush=True)


if __name__ == "__main__":
    main()
