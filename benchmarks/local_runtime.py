"""In-process llama.cpp against llama.cpp's OpenAI-compatible server, on the same RLM task.

Both serve the same GGUF with the same window and threads.  The task mixes root turns
with sub-calls (the model is asked to confirm its finding with llm_query), which is where
they differ: in-process, each conversation keeps its own KV cache ("lanes"); the server
has one slot, so every sub-call evicts the root's cached prefix.  Needs
``pip install -e '.[local,server]'``.

    python benchmarks/local_runtime.py [--runs 2]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time

import httpx

from rlm import RLM
from rlm.backends.local import LocalBackend
from rlm.backends.local_models import DEFAULT_MODEL, ensure_model
from rlm.backends.openai_compat import OpenAIBackend
from rlm.bench.documents import service_log

N_CTX = 8192


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(path: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", path, "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", str(N_CTX), "--n_threads", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the llama.cpp server did not start")


def run(backend, label: str, runs: int) -> None:
    times, correct, turns = [], 0, []
    for seed in range(runs):
        doc = service_log(160_000, seed=seed)
        rlm = RLM(backend=backend, max_iterations=6)
        t = time.perf_counter()
        result = rlm.completion(doc.question + " Before answering, use llm_query to check that "
                                "the line you found really gives that code.", context=doc.text)
        times.append(time.perf_counter() - t)
        correct += result.response.strip().strip("\"'") == doc.answer
        turns.append(sum(u.calls for u in result.usage.values()))
    print(f"{label:34} median {statistics.median(times):6.1f} s per task, "
          f"{correct}/{runs} correct, LM calls {turns}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    path = str(ensure_model(DEFAULT_MODEL))
    local = LocalBackend(DEFAULT_MODEL, n_ctx=N_CTX, n_threads=2)
    local.warm_up()
    run(local, "in-process (lanes, forced code)", args.runs)
    local.close()
    proc, url = start_server(path)
    try:
        server = OpenAIBackend(model="local", base_url=url, timeout_s=600)
        server.prompt_profile = "small"  # same prompts, only the runtime differs
        run(server, "llama_cpp.server (one slot)", args.runs)
        server.close()
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
