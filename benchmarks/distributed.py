"""Ray: batches and remote children (``executor="ray"``), against the same work on threads.

Three measurements, each printed as a table (figures only, nothing asserted):

- **A latency-bound batch**: ``RLM.batch`` of ``--items`` completions against the fake
  OpenAI-compatible server (``tests/fakes/openai_server.py``, on 127.0.0.1, ``--latency``
  seconds a call), ``backend="openai"`` pointed at it.  Each completion makes ``--turns``
  LM calls: turns whose ```repl block reads the context, the last one calling ``FINAL``
  (with the default of 1, one turn whose block calls ``FINAL``).  For each N of
  ``--workers``: ``executor="local"`` with ``max_concurrency=N`` threads (all measured
  first, before any Ray node runs), then ``executor="ray"`` on a fresh one-node cluster
  started with ``ray start --head --num-cpus=N``: each item holds ``num_cpus=1``, so at
  most N worker processes run items; every item is submitted at once and Ray's scheduler
  is the limit.  An untimed batch of 4N items first starts the workers and builds each
  one's ``RLM`` (its time is printed as the warm-up).  The figures: wall time, speed-up
  against 1 worker and against the local executor at the same N, the most LM calls in
  flight at once that the server saw, how many worker processes ran items, and the CPU
  seconds this run's own processes spent (the driver, and in the private namespace the
  Ray node and its workers) against those of every other process of the machine.
- **Per-child overhead**: a root whose code calls ``rlm_query_batched`` over
  ``--children`` children (``backend="scripted"``, no latency; each child answers in one
  turn), ``executor="local"`` against ``executor="ray"`` on the cluster of the largest N,
  one child at a time (``max_concurrency=1``: the latency a child adds) and 16 at a time.
  Each run is timed with no child, one child and ``--children`` (median of ``--repeats``):
  "first child" is one child less none (a remote run starts its trace relay actor then),
  "each further child" is the rest over the other children.
- **What one remote step costs**: a no-op Ray task (one at a time, and many at once), a
  new ledger actor (every completion of an ``RLM(executor="ray")`` makes one), an LM
  call's reserve and commit on the ledger actor from a worker, the actor's throughput with
  N workers at once, and the same pair on an in-process ``Budget``.

Without ``--address`` the script re-executes itself in a new network namespace that has
only a loopback interface (``unshare --net``, as ``scripts/test-distributed.sh`` does):
Ray's servers listen on every interface, and nothing outside can reach them there.  A
supervisor process in that namespace runs the benchmark and then ends every process of
the namespace but itself, however the benchmark ended.  The Ray temp dir is
``$RLM_RAY_TMP`` (default: a new ``/tmp/rlmray.*``, removed afterwards), the port
``$RLM_RAY_PORT`` (default 6399).  ``--address`` uses a running cluster instead (N is
then each batch's ``max_concurrency`` on it, and the CPU figures count the driver
only); the fake server listens on the driver's 127.0.0.1, so that cluster's workers must
run on this machine.

    .venv/bin/python benchmarks/distributed.py [--items 200] [--workers 1,2,4]
        [--turns 1] [--latency 0.2] [--children 40] [--repeats 3] [--address ADDR]

A quick run: ``--items 40 --children 16 --repeats 1``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RAY = ROOT / ".venv" / "bin" / "ray"
#: Unset outside; "" in the supervisor (in the new namespace); the namespace's id in the
#: benchmark's process (see ``_supervise``).
NETNS_FLAG = "RLM_BENCH_NETNS"
CLK_TCK = os.sysconf("SC_CLK_TCK")

STEP = "```repl\nn = len(context)\nprint(n)\n```"
DONE = "```repl\nFINAL(f'{len(context)} chars')\n```"


def block(code: str) -> str:
    return f"```repl\n{code}\n```"


# -- the scripted model of the tree (runs on the driver and on the workers) -------------------
def fan_out(messages: list[dict[str, Any]], depth: int) -> str:
    """The root asks ``rlm_query_batched`` for the children its question names, then
    answers; each child answers in one turn."""
    last = messages[-1]["content"]
    if depth == 0 and "Question: fan " in last:
        count = int(last.split("Question: fan ")[1].split()[0])
        return block(f"rs = rlm_query_batched(['leaf'] * {count})\nprint(len(rs))")
    if depth == 0:
        return block("bad = [r[:300] for r in rs if r != 'leaf done']\n"
                     "FINAL(repr(bad) if bad else str(len(rs)))")
    return block("FINAL('leaf done')")


# -- the private network namespace and the cluster ----------------------------------------
def _private_namespace() -> str:
    """This process's network namespace, checked to be a private one: the benchmark runs
    as the child of a supervisor that ``unshare --net`` started (see ``_supervise``)."""
    mine = os.readlink("/proc/self/ns/net")
    if mine != os.environ.get(NETNS_FLAG) or mine == _outside_namespace():
        raise SystemExit("distributed.py: not in its private network namespace")
    return mine


def _outside_namespace() -> str:
    """The namespace of the process that started ``unshare`` (``RLM_BENCH_PARENT``)."""
    try:
        return os.readlink(f"/proc/{os.environ.get('RLM_BENCH_PARENT', '0')}/ns/net")
    except OSError:
        return "unknown"


def _supervise() -> None:
    """Run the benchmark in a new network namespace with only loopback, then end every
    process of that namespace, however the benchmark ended (this supervisor never imports
    Ray, so its own signal handlers hold).  Returns only in the benchmark's process."""
    if os.environ.get(NETNS_FLAG) is None:  # 1. re-execute under ``unshare --net``
        flags = ["--net"] if os.getuid() == 0 else ["--net", "--map-root-user"]
        env = {**os.environ, NETNS_FLAG: "", "RLM_BENCH_PARENT": str(os.getppid())}
        os.execvpe("unshare", ["unshare", *flags, sys.executable,
                               str(Path(__file__).resolve()), *sys.argv[1:]], env)
    if os.environ.get(NETNS_FLAG):  # 3. the benchmark itself
        return
    mine = os.readlink("/proc/self/ns/net")  # 2. the supervisor, in the new namespace
    if mine == _outside_namespace():
        raise SystemExit("distributed.py: unshare --net gave no private namespace")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    tmp = os.environ.get("RLM_RAY_TMP") or tempfile.mkdtemp(prefix="rlmray.")
    env = {**os.environ, NETNS_FLAG: mine, "RLM_RAY_TMP": tmp,
           "RLM_BENCH_SUPERVISOR": str(os.getpid())}
    child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]],
                             env=env)

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(OSError):
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        code = child.wait()
    finally:
        _end_namespace(mine)
        if not os.environ.get("RLM_RAY_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(code if code >= 0 else 128 - code)


def _namespace_pids(namespace: str) -> list[int]:
    """Every process of ``namespace`` but this one and its supervisor."""
    keep = {os.getpid(), int(os.environ.get("RLM_BENCH_SUPERVISOR") or 0)}
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in keep:
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/net") == namespace:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def _end_namespace(namespace: str) -> None:
    """Kill every process of this private namespace but this one (and its supervisor),
    and wait until they are gone."""
    for _ in range(50):
        pids = _namespace_pids(namespace)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _cpu_s(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) of each of ``pids`` still alive."""
    seconds = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            seconds[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    return seconds


class Meter:
    """CPU seconds spent by this run's processes (this one and, in its private namespace,
    the Ray node and its workers), and by every other process of the machine.  A process
    that exits in between (a batch's ledger actor) is not counted."""

    def __init__(self, namespace: str | None) -> None:
        self.namespace = namespace

    def _ours(self) -> dict[int, float]:
        pids = [os.getpid()] + (_namespace_pids(self.namespace) if self.namespace else [])
        return _cpu_s(pids)

    @staticmethod
    def _machine() -> float:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        return (sum(fields[:3]) + sum(fields[5:8])) / CLK_TCK

    def start(self) -> tuple[dict[int, float], float]:
        return self._ours(), self._machine()

    def stop(self, started: tuple[dict[int, float], float]) -> tuple[float, float]:
        before, machine = started
        ours = sum(s - before.get(pid, 0.0) for pid, s in self._ours().items())
        return ours, max(0.0, self._machine() - machine - ours)


class Cluster:
    """A one-node Ray cluster of ``cpus`` logical CPUs in this private namespace."""

    def __init__(self, cpus: int, tmp: Path, port: int, namespace: str) -> None:
        self.cpus, self.port, self.namespace = cpus, port, namespace
        self.tmp = tmp / f"cpus{cpus}"
        self.address = f"127.0.0.1:{port}"

    def __enter__(self) -> Cluster:
        import ray

        self.tmp.mkdir(parents=True, exist_ok=True)
        log = self.tmp.with_suffix(".log")
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        with log.open("wb") as handle:
            done = subprocess.run(
                [str(RAY), "start", "--head", "--node-ip-address=127.0.0.1",
                 f"--port={self.port}", f"--temp-dir={self.tmp}", f"--num-cpus={self.cpus}",
                 "--disable-usage-stats", "--include-dashboard=false",
                 f"--object-store-memory={512 * 1024 * 1024}",
                 "--min-worker-port=22000", "--max-worker-port=22999"],
                stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        if done.returncode:
            raise SystemExit(f"ray start failed:\n{log.read_text()[-2000:]}")
        ray.init(address=self.address, log_to_driver=False)
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        ray.shutdown()
        _end_namespace(self.namespace)


class Attached:
    """A running cluster given by ``--address`` (N is then each batch's max_concurrency)."""

    def __init__(self, address: str) -> None:
        self.address = address

    def __enter__(self) -> Attached:
        import ray

        ray.init(address=self.address, log_to_driver=False)
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        ray.shutdown()


# -- the batch ----------------------------------------------------------------------------
def scripted_turns(turns: int) -> Any:
    def reply(body: dict[str, Any]) -> str:
        turn = 1 + sum(1 for m in body.get("messages") or [] if m.get("role") == "assistant")
        return STEP if turn < turns else DONE
    return reply


def peak_in_flight(starts: list[float], latency_s: float) -> int:
    """The most requests answered at once (each takes ``latency_s`` from its arrival)."""
    edges = sorted([(t, 1) for t in starts] + [(t + latency_s, -1) for t in starts],
                   key=lambda e: (e[0], e[1]))
    peak = now = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def run_batch(rlm: Any, fake: Any, items: int, executor: str, concurrency: int | None,
              meter: Meter, latency_s: float) -> dict[str, Any]:
    prompts = [f"item {i}" for i in range(items)]
    contexts = [f"record {i}: " + "x" * (100 + i) for i in range(items)]
    fake.reset()
    cpu = meter.start()
    started = time.perf_counter()
    results = rlm.batch(prompts, contexts, executor=executor, max_concurrency=concurrency)
    wall = time.perf_counter() - started
    ours, others = meter.stop(cpu)
    wrong = sum(r.stop_reason != "final" or r.response != f"{len(c)} chars"
                for r, c in zip(results, contexts, strict=True))
    pids = {r.placement["pid"] for r in results if getattr(r, "placement", None)}
    return {"wall_s": wall, "wrong": wrong, "pids": len(pids), "calls": len(fake.requests),
            "peak": peak_in_flight([r.received_at for r in fake.requests], latency_s),
            "cpu_s": ours, "others_cpu_s": others,
            "errors": [r.error for r in results if r.error][:2]}


# -- the tree -----------------------------------------------------------------------------
def tree_rlm(executor: str, address: str | None, concurrency: int, children: int) -> Any:
    from rlm import RLM

    remote = {} if executor == "local" else {
        "executor": "ray", "executor_kwargs": {"address": address, "num_cpus": 1}}
    return RLM(backend="scripted", backend_kwargs={"responses": fan_out}, max_depth=2,
               max_iterations=children + 10, max_concurrency=concurrency, **remote)


def time_tree(rlm: Any, children: int) -> float:
    started = time.perf_counter()
    result = rlm.completion(f"fan {children} children", context="c")
    wall = time.perf_counter() - started
    if result.stop_reason != "final" or result.response != str(children):
        raise SystemExit(f"tree of {children}: {result.stop_reason} {result.response!r} "
                         f"{result.error}")
    return wall


def measure_tree(address: str, children: int, repeats: int) -> list[dict[str, Any]]:
    """Per (executor, concurrency): the root alone, with one child, with ``children``."""
    rows = []
    for concurrency in (1, 16):
        for executor in ("local", "ray"):
            rlm = tree_rlm(executor, address, concurrency, children)
            time_tree(rlm, 4)  # warm-up: the workers import rlm and build the RLM
            runs: dict[int, list[float]] = {0: [], 1: [], children: []}
            for _ in range(repeats):
                for count in runs:
                    runs[count].append(time_tree(rlm, count))
            rlm.close()
            alone, one, full = (statistics.median(runs[k]) for k in (0, 1, children))
            rows.append({"executor": executor, "concurrency": concurrency, "alone_s": alone,
                         "one_s": one, "full_s": full, "first_s": one - alone,
                         "each_s": (full - one) / max(1, children - 1)})
    return rows


# -- one remote step ----------------------------------------------------------------------
def noop() -> int:
    return os.getpid()


def ledger_pairs(handle: Any, pairs: int) -> float:
    """Seconds per reserve + commit through a ``RemoteBudget`` (run on a worker)."""
    from rlm.distributed.ledger import RemoteBudget
    from rlm.types import Completion

    budget = RemoteBudget(handle)
    completion = Completion(text="ok", model="m", input_tokens=10, output_tokens=1,
                            cost_usd=0.0001)
    budget.commit(budget.reserve(0.001, 100), completion, "m")  # warm
    started = time.perf_counter()
    for _ in range(pairs):
        budget.commit(budget.reserve(0.001, 100), completion, "m")
    elapsed = time.perf_counter() - started
    budget.close()
    return elapsed / pairs


def local_pairs(pairs: int) -> float:
    from rlm.core.limits import Budget, Limits
    from rlm.types import Completion

    budget = Budget(Limits(max_budget=1e6))
    completion = Completion(text="ok", model="m", input_tokens=10, output_tokens=1,
                            cost_usd=0.0001)
    started = time.perf_counter()
    for _ in range(pairs):
        budget.commit(budget.reserve(0.001, 100), completion, "m")
    return (time.perf_counter() - started) / pairs


def measure_steps(tasks: int, pairs: int, clients: int) -> dict[str, float]:
    import ray

    from rlm.core.limits import Limits
    from rlm.distributed.ledger import RemoteBudget

    task = ray.remote(num_cpus=1)(noop)
    ledger_task = ray.remote(num_cpus=1)(ledger_pairs)
    ray.get([task.remote() for _ in range(8)])  # warm
    started = time.perf_counter()
    for _ in range(tasks):
        ray.get(task.remote())
    serial = (time.perf_counter() - started) / tasks
    started = time.perf_counter()
    ray.get([task.remote() for _ in range(tasks)])
    parallel = (time.perf_counter() - started) / tasks
    creations = []
    for _ in range(3):  # what each completion with executor="ray" starts with
        started = time.perf_counter()
        ledger = RemoteBudget.create(Limits(max_budget=1e6))  # waits for its first reply
        creations.append(time.perf_counter() - started)
        ledger.shutdown()
    ledger = RemoteBudget.create(Limits(max_budget=1e6))
    try:
        one = ray.get(ledger_task.remote(ledger.handle, pairs))
        started = time.perf_counter()
        ray.get([ledger_task.remote(ledger.handle, pairs) for _ in range(clients)])
        throughput = clients * pairs / (time.perf_counter() - started)
    finally:
        ledger.shutdown()
    return {"task_serial_s": serial, "task_parallel_s": parallel,
            "actor_start_s": statistics.median(creations), "ledger_pair_s": one,
            "ledger_pairs_per_s": throughput, "local_pair_s": local_pairs(pairs * 10)}


# -- the run ------------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200, help="completions in the batch")
    parser.add_argument("--workers", default="1,2,4",
                        help="worker processes (Ray CPUs) and local threads, comma-separated")
    parser.add_argument("--turns", type=int, default=1, help="LM calls per completion")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per LM call")
    parser.add_argument("--children", type=int, default=40, help="children of the tree")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each tree (median)")
    parser.add_argument("--tasks", type=int, default=200, help="no-op Ray tasks timed")
    parser.add_argument("--pairs", type=int, default=300, help="ledger reserve+commit pairs")
    parser.add_argument("--address", help="a running Ray cluster on this machine "
                                          "(default: start one in a private namespace)")
    parser.add_argument("--skip-batch", action="store_true", help="only the tree and steps")
    args = parser.parse_args()
    workers = [int(n) for n in args.workers.split(",")]

    if not args.address:
        _supervise()
    namespace = None if args.address else _private_namespace()
    sys.path.insert(0, str(ROOT))
    import ray

    from rlm import RLM
    from tests.fakes.openai_server import FakeOpenAIServer

    # Functions of this script travel to the workers by value (they cannot import it).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    tmp = Path(os.environ["RLM_RAY_TMP"]) if namespace else Path(".")  # set by _supervise
    port = int(os.environ.get("RLM_RAY_PORT", "6399"))
    meter = Meter(namespace)
    where = args.address or f"a fresh one-node cluster per N (ray start --num-cpus=N, port {port})"
    print(f"rlm on Ray: {os.cpu_count()} cores here; clusters: {where}")

    batch_rows: dict[int, dict[str, dict[str, Any]]] = {n: {} for n in workers}
    tree_rows: list[dict[str, Any]] = []
    steps: dict[str, float] = {}
    with FakeOpenAIServer(reply=scripted_turns(args.turns), latency_s=args.latency) as fake:
        options = {"base_url": fake.url, "api_key": "x", "model": "fake"}
        if not args.skip_batch:
            local = RLM(backend="openai", backend_kwargs=options, max_iterations=args.turns + 2)
            run_batch(local, fake, 8, "local", 4, meter, args.latency)  # warm-up
            for n in workers:
                batch_rows[n]["local"] = run_batch(local, fake, args.items, "local", n, meter,
                                                   args.latency)
            local.close()
        for index, n in enumerate(workers):
            last = index == len(workers) - 1
            if args.skip_batch and not last:
                continue
            cluster = Attached(args.address) if args.address else Cluster(
                n, tmp, port, namespace)  # type: ignore[arg-type]
            with cluster:
                if not args.skip_batch:
                    remote = RLM(backend="openai", backend_kwargs=options,
                                 max_iterations=args.turns + 2, executor="ray",
                                 executor_kwargs={"address": cluster.address, "num_cpus": 1})
                    limit = n if args.address else None
                    cold = run_batch(remote, fake, 4 * n, "ray", limit, meter, args.latency)
                    row = run_batch(remote, fake, args.items, "ray", limit, meter,
                                    args.latency)
                    row["cold_s"] = cold["wall_s"]
                    batch_rows[n]["ray"] = row
                    remote.close()
                if last:
                    tree_rows = measure_tree(cluster.address, args.children, args.repeats)
                    steps = measure_steps(args.tasks, args.pairs, n)
                    steps["cpus"] = n

    floor = args.items * args.turns * args.latency
    if not args.skip_batch:
        print(f"\nbatch: {args.items} completions x {args.turns} LM calls of "
              f"{args.latency * 1000:.0f} ms (one at a time: {floor:.0f} s)")
        print("| N | local (threads) | ray (tasks) | ray vs 1 worker | ray vs local "
              "| peak calls in flight (local / ray) | ray worker pids | CPU s (local / ray) "
              "| others' CPU s | ray warm-up (4N items) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        one = batch_rows[workers[0]]["ray"]["wall_s"]
        for n in workers:
            lo, ra = batch_rows[n]["local"], batch_rows[n]["ray"]
            print(f"| {n} | {lo['wall_s']:.1f} s | {ra['wall_s']:.1f} s "
                  f"| {one / ra['wall_s']:.2f}x | {lo['wall_s'] / ra['wall_s']:.2f}x "
                  f"| {lo['peak']} / {ra['peak']} | {ra['pids']} "
                  f"| {lo['cpu_s']:.1f} / {ra['cpu_s']:.1f} "
                  f"| {lo['others_cpu_s']:.0f} / {ra['others_cpu_s']:.0f} "
                  f"| {ra['cold_s']:.1f} s |")
        for n in workers:
            for kind, row in batch_rows[n].items():
                if row["wrong"] or row["calls"] != args.items * args.turns:
                    print(f"  N={n} {kind}: {row['wrong']} wrong, {row['calls']} LM calls; "
                          f"{row['errors']}")
    print(f"\ntree: a root whose code calls rlm_query_batched over {args.children} children "
          f"(scripted, no latency), on {workers[-1]} CPUs; median of {args.repeats}")
    print("| executor | children at once | root alone | root + 1 child "
          f"| root + {args.children} | first child | each further child |")
    print("|---|---|---|---|---|---|---|")
    for row in tree_rows:
        print(f"| {row['executor']} | {row['concurrency']} | {_ms(row['alone_s'])} "
              f"| {_ms(row['one_s'])} | {_ms(row['full_s'])} | {_ms(row['first_s'])} "
              f"| {_ms(row['each_s'])} |")
    n = steps["cpus"]
    print(f"\none remote step (on {n:.0f} CPUs)")
    print("| step | time |")
    print("|---|---|")
    print(f"| no-op Ray task, one at a time | {_ms(steps['task_serial_s'])} |")
    print(f"| no-op Ray task, {args.tasks} at once | {_ms(steps['task_parallel_s'])} each |")
    print(f"| a new ledger actor, up to its first reply | {_ms(steps['actor_start_s'])} |")
    print(f"| reserve + commit on the ledger actor, from a worker | "
          f"{_ms(steps['ledger_pair_s'])} |")
    print(f"| the ledger actor, {n:.0f} workers at once | "
          f"{steps['ledger_pairs_per_s']:.0f} reserve+commit pairs/s |")
    print(f"| reserve + commit on an in-process Budget | "
          f"{steps['local_pair_s'] * 1e6:.1f} µs |")


if __name__ == "__main__":
    main()
