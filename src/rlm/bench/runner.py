"""Run methods on task instances and append one JSONL row per (instance, method).

The results file is the state: a row is written (and flushed) as soon as a method finishes,
and a new run skips every (instance, method, backend model) already in the file, so an
interrupted run resumes where it stopped.  A truncated last line (a crash mid-write) is
ignored and the next row starts on a new line.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import itertools
import json
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from rlm import ConfigError, LMBackend, registry
from rlm.bench.methods import METHODS, MethodConfig, MethodResult, run_method
from rlm.bench.tasks import TASKS, Instance, instance_id, make_instance

__all__ = ["read_rows", "row_key", "run"]

Key = tuple[str, str, str]


def row_key(row: Mapping[str, Any]) -> Key:
    """What identifies a result: the instance id, the method and the backend model."""
    return (str(row.get("id")), str(row.get("method")), str(row.get("model")))


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every well-formed row of a results file (none when it does not exist)."""
    file = Path(path)
    if not file.exists():
        return []
    rows = []
    with file.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut short by an interrupted write
            if isinstance(row, dict) and "id" in row and "method" in row:
                rows.append(row)
    return rows


class _Results:
    """The results file, appended to from many threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size:
            with path.open("rb") as handle:
                handle.seek(-1, 2)
                if handle.read(1) != b"\n":
                    with path.open("a", encoding="utf-8") as out:
                        out.write("\n")

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, ensure_ascii=False, default=str) + "\n"
        with self.lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()


def _row(instance: Instance, method: str, backend: LMBackend, result: MethodResult | None,
         error: BaseException | None) -> dict[str, Any]:
    prediction = None if result is None else result.answer
    row: dict[str, Any] = {
        "id": instance.id, "task": instance.task, "length": instance.length,
        "seed": instance.seed, "method": method, "backend": backend.name,
        "model": backend.model_name, "context_tokens": instance.context_tokens,
        "question": instance.question, "answer": instance.answer,
        "prediction": prediction, "score": instance.score(prediction),
    }
    if result is not None:
        usage = result.usage
        row.update(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                   cost_usd=usage.cost_usd, calls=usage.calls,
                   latency_s=round(result.latency_s, 3), stop_reason=result.stop_reason,
                   extra=result.extra)
    row["error"] = None if error is None else f"{type(error).__name__}: {error}"
    row["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return row


def _check(names: Iterable[str], known: Mapping[str, Any], what: str) -> list[str]:
    names = list(names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown {what} {', '.join(unknown)}; known: {', '.join(known)}")
    if not names:
        raise ConfigError(f"give at least one {what}")
    return names


def _progress(enabled: bool, methods: Sequence[str], totals: Mapping[str, int],
              done: Mapping[str, int]) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description:<12}"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True), disable=not enabled)
    bars = {m: progress.add_task(m, total=totals[m], completed=done[m]) for m in methods}
    return progress, bars


class _Job(NamedTuple):
    """One instance to build and the methods still to run on it."""

    task: str
    length: int
    seed: int
    methods: list[str]


def _plan(grid: Iterable[tuple[str, int, int]], methods: Sequence[str], model_name: str,
          existing: Mapping[Key, Any]) -> tuple[list[_Job], dict[str, int]]:
    """The jobs still to run, and how many instances each method has done already."""
    jobs: list[_Job] = []
    done = dict.fromkeys(methods, 0)
    for task, length, seed in grid:
        key = instance_id(task, length, seed)
        todo = [m for m in methods if (key, m, model_name) not in existing]
        for m in methods:
            done[m] += m not in todo
        if todo:
            jobs.append(_Job(task, length, seed, todo))
    return jobs, done


class _Work:
    """Runs jobs on one backend, appending a row per method as soon as it finishes.

    ``stop`` is set by Ctrl-C (or any non-``Exception``): no new instance or method
    starts, the ones under way finish and are recorded.
    """

    def __init__(self, model: LMBackend, config: MethodConfig, results: _Results,
                 rows: dict[Key, dict[str, Any]], advance: Callable[[str], None]) -> None:
        self.model, self.config, self.results = model, config, results
        self.rows, self.advance = rows, advance
        self.stop = threading.Event()

    def __call__(self, job: _Job) -> None:
        if self.stop.is_set():
            return
        instance = make_instance(job.task, job.length, job.seed)
        for method in job.methods:
            if self.stop.is_set():
                return
            result, error = None, None
            try:
                result = run_method(method, instance, self.model, self.config)
            except Exception as exc:  # recorded in the row: one failure never stops a run
                error = exc
            except BaseException:
                self.stop.set()
                raise
            row = _row(instance, method, self.model, result, error)
            self.results.append(row)
            self.rows[row_key(row)] = row
            self.advance(method)

    def run_all(self, jobs: Sequence[_Job], concurrency: int) -> None:
        """Run ``jobs``, ``concurrency`` at once; the first exception that escapes a job
        (an interrupt) stops the others from starting and is raised."""
        with cf.ThreadPoolExecutor(max_workers=concurrency,
                                   thread_name_prefix="rlm-bench") as pool:
            futures = [pool.submit(self, job) for job in jobs]
            try:
                for future in cf.as_completed(futures):
                    future.result()
            except BaseException:
                # Ctrl-C: no new instance or method starts; the ones under way finish.
                self.stop.set()
                for future in futures:
                    future.cancel()
                raise


def job_rows(backend: Any, backend_kwargs: Mapping[str, Any] | None, config: MethodConfig,
             job: _Job) -> list[dict[str, Any]]:
    """Run one job where it lands (a Ray worker) and return its rows."""
    model, owned = registry.backend_from_spec(backend, backend_kwargs)
    try:
        rows: list[dict[str, Any]] = []
        instance = make_instance(job.task, job.length, job.seed)
        for method in job.methods:
            result, error = None, None
            try:
                result = run_method(method, instance, model, config)
            except Exception as exc:  # recorded in the row, as on one machine
                error = exc
            rows.append(_row(instance, method, model, result, error))
        return rows
    finally:
        if owned:
            model.close()


def _run_remote(work: _Work, jobs: Sequence[_Job], concurrency: int, backend: Any,
                backend_kwargs: Mapping[str, Any] | None, executor: str,
                executor_kwargs: Mapping[str, Any] | None) -> None:
    """``jobs`` on a cluster; each job's rows are appended as it comes back.  A job lost
    with its worker records nothing (the next run does it again)."""
    if isinstance(backend, LMBackend):
        raise ConfigError(f"executor={executor!r} builds the backend on each worker: pass "
                          "it by name and options, not as an object")
    remote = registry.get_executor_class(executor)(dict(executor_kwargs or {}), {})

    def record(index: int, rows: Any) -> None:
        if isinstance(rows, BaseException):
            print(f"rlm bench: {jobs[index].task} seed {jobs[index].seed} was lost: "
                  f"{rows}", file=sys.stderr)
            return
        for row in rows:
            work.results.append(row)
            work.rows[row_key(row)] = row
            work.advance(row["method"])

    remote.map(job_rows, [(backend, backend_kwargs, work.config, job) for job in jobs],
               on_result=record, max_in_flight=concurrency)


def _select(rows: Mapping[Key, dict[str, Any]], grid: Iterable[tuple[str, int, int]],
            methods: Sequence[str], model_name: str) -> list[dict[str, Any]]:
    """The rows of this grid (old and new), in the results file's order."""
    keys = {(instance_id(task, length, seed), m, model_name)
            for task, length, seed in grid for m in methods}
    return [row for key, row in rows.items() if key in keys]


def run(
    tasks: Sequence[str],
    lengths: Sequence[int],
    methods: Sequence[str],
    backend: str | LMBackend | Mapping[str, Any] = "local",
    backend_kwargs: Mapping[str, Any] | None = None,
    instances: int = 1,
    out_path: str | Path = "results.jsonl",
    concurrency: int = 1,
    *,
    seed: int = 0,
    config: MethodConfig | None = None,
    progress: bool = True,
    retry_errors: bool = False,
    executor: str = "local",
    executor_kwargs: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run every method on ``instances`` seeds of every task at every length.

    ``backend`` is a registered name (with ``backend_kwargs``), a mapping
    ``{"backend": name, **options}`` or an ``LMBackend`` (the caller closes it).  Rows
    already in ``out_path`` for the same backend model are skipped (with ``retry_errors``,
    rows that failed are run again and the new row is appended).  ``concurrency``
    instances run at once in a thread pool (the local backend still makes one model call
    at a time).  ``executor="ray"`` runs each instance as a Ray task instead (at most
    ``concurrency`` at once, ``executor_kwargs`` as for ``RLM``: docs/distributed.md);
    the backend is then built on each worker from its name and options.  Returns the
    rows of this grid, old and new.
    """
    tasks = _check(tasks, TASKS, "task")
    methods = _check(methods, METHODS, "method")
    if instances < 1 or concurrency < 1 or not lengths:
        raise ConfigError("instances and concurrency must be >= 1, and lengths not empty")
    results = _Results(Path(out_path))
    model, owned = registry.backend_from_spec(backend, backend_kwargs)
    try:
        rows = {row_key(r): r for r in read_rows(results.path)
                if not (retry_errors and r.get("error"))}
        grid = list(itertools.product(tasks, lengths, range(seed, seed + instances)))
        jobs, done = _plan(grid, methods, model.model_name, rows)
        bar, bars = _progress(progress, methods, dict.fromkeys(methods, len(grid)), done)
        work = _Work(model, config or MethodConfig(), results, rows,
                     lambda method: bar.advance(bars[method]))
        with bar:
            if executor == "local":
                work.run_all(jobs, concurrency)
            else:
                _run_remote(work, jobs, concurrency, backend, backend_kwargs, executor,
                            executor_kwargs)
        return _select(rows, grid, methods, model.model_name)
    finally:
        if owned:
            model.close()
