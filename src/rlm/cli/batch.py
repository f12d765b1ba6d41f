"""``rlm batch``: one completion per line of a JSONL file, one result line per item.

Every input line is checked before anything runs.  Results are appended to ``-o`` as each
item finishes (one flushed line each), so an interrupted batch keeps what it finished; the
same command run again skips the ids already answered and runs the failed ones again
(``--restart`` starts over).  The items run through ``RLM.batch``: threads here, or Ray
tasks with ``--executor ray``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import click

from rlm.api import RLM
from rlm.cli.backend_flags import backend_kwargs, model_and_limit_options
from rlm.cli.run import RunOptions, _announce, _cancel_on_sigint, _schema, _sub_backend
from rlm.config import user_dir
from rlm.errors import Cancelled, ConfigError, LimitExceeded
from rlm.result import RLMResult

__all__ = ["EXIT_FAILED", "Item", "batch", "read_items", "read_output"]

#: The exit status when at least one item failed (``stop_reason="error"``).
EXIT_FAILED = 4
#: Stop reasons of the items a resumed batch runs again: they did not run to their end.
RERUN = frozenset({"error", "cancelled"})
_KEYS = frozenset({"id", "question", "context", "context_path"})
_SHOWN = 10  # bad lines named in the error message


@dataclass(frozen=True)
class Item:
    """One input line: ``context`` is ``None`` (the question is the input), a ``str``, or
    the ``Path`` of a file or folder."""

    line: int
    id: str | int
    question: str
    context: str | Path | None = None

    @property
    def key(self) -> str:
        return _key(self.id)


def _key(item_id: Any) -> str:
    """The id as compared for duplicates and resuming (``1`` and ``"1"`` differ)."""
    return json.dumps(item_id, sort_keys=True)


def _parse(line: int, text: str, base: Path) -> Item:
    """The item of one input line (``ValueError`` saying what is wrong)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (keys: id, question, context, "
                         "context_path)")
    item_id = data.get("id", line)
    if isinstance(item_id, bool) or not isinstance(item_id, str | int):
        raise ValueError(f'"id" must be a string or an integer, not {item_id!r}')
    question = data.get("question")
    if not isinstance(question, str):
        raise ValueError('no "question" (a string)' if question is None
                         else '"question" must be a string')
    if data.get("context") is not None and data.get("context_path") is not None:
        raise ValueError('give "context" or "context_path", not both')
    context: str | Path | None = data.get("context")
    if context is not None and not isinstance(context, str):
        raise ValueError('"context" must be a string')
    spec = data.get("context_path")
    if spec is not None:
        if not isinstance(spec, str) or not spec:
            raise ValueError('"context_path" must be a path (a string)')
        context = base / Path(spec).expanduser()
        if not context.exists():
            raise ValueError(f"context_path not found: {spec} ({context})")
    return Item(line, item_id, question, context)


def read_items(path: Path) -> list[Item]:
    """Every item of the JSONL file ``path``, checked; ``ConfigError`` naming the bad lines
    (by number, from 1) when there is one.  Blank lines are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    items: list[Item] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            item = _parse(number, text, path.parent)
        except ValueError as exc:
            problems.append(f"line {number}: {exc}")
            continue
        if item.key in seen:
            problems.append(f"line {number}: duplicate id {item.id!r} (first on line "
                            f"{seen[item.key]})")
            continue
        seen[item.key] = number
        items.append(item)
    if problems:
        more = len(problems) - _SHOWN
        shown = "; ".join(problems[:_SHOWN]) + (f"; and {more} more" if more > 0 else "")
        raise ConfigError(f"{path}: {len(problems)} bad line"
                          f"{'' if len(problems) == 1 else 's'}, nothing was run: {shown}")
    return items


def read_output(path: Path) -> set[str]:
    """The ids (as ``_key``) already done in the output file ``path``.

    The lines of items to run again (``RERUN``) are dropped from the file, and so is a last
    line cut short by a kill, so that the file ends with one line per id.  A line that is
    not a result of ``rlm batch`` raises ``ConfigError`` (the file is left as it was).
    """
    if not path.exists():
        return set()
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the output {path}: {exc}") from None
    lines = raw.splitlines()
    kept: list[str] = []
    done: set[str] = set()
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except ValueError:
            row = None
            if number == len(lines) and not raw.endswith("\n"):
                click.echo(f"rlm batch: dropping the unfinished last line of {path}", err=True)
                continue
        if not isinstance(row, dict) or "id" not in row or "stop_reason" not in row:
            raise ConfigError(f"{path}: line {number} is not a result of rlm batch; give "
                              "another -o file, or --restart to overwrite it")
        if row["stop_reason"] in RERUN:
            continue
        done.add(_key(row["id"]))
        kept.append(text)
    if len(kept) != sum(1 for text in lines if text.strip()) or (raw and not raw.endswith("\n")):
        _replace(path, kept)  # also when the last line lacks its newline
    return done


def _replace(path: Path, lines: list[str]) -> None:
    """Write ``lines`` to ``path`` atomically (a new file, then a rename)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text("".join(f"{text}\n" for text in lines), encoding="utf-8")
    os.replace(temporary, path)


class _Results:
    """Appends one flushed JSON line per finished item to ``path`` and prints its progress
    line.  The file is opened at the first result (emptied first with ``restart``), so a
    batch refused before anything ran leaves it as it was."""

    def __init__(self, path: Path, items: list[Item], *, restart: bool) -> None:
        self._path, self._items, self._mode = path, items, "w" if restart else "a"
        self._stream: TextIO | None = None
        self._lock = threading.Lock()
        self.results: dict[int, RLMResult] = {}

    def __call__(self, index: int, result: RLMResult) -> None:
        item = self._items[index]
        row = {"id": item.id, **result.to_dict()}
        with self._lock:
            if self._stream is None:
                self._stream = self._path.open(self._mode, encoding="utf-8")
            self._stream.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            self._stream.flush()
            self.results[index] = result
            count = len(self.results)
        detail = f": {_one_line(result.error)}" if result.error else ""
        click.echo(f"rlm batch: [{count}/{len(self._items)}] id={item.id} "
                   f"{result.stop_reason} · ${result.cost_usd:.4f} · "
                   f"{result.elapsed_s:.1f}s{detail}", err=True)

    def close(self) -> None:
        with self._lock:
            if self._stream is not None:
                self._stream.close()


def _one_line(text: object, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _exit_code(results: Iterable[RLMResult]) -> int:
    """0 all answered; else ``EXIT_FAILED`` when one failed, 130 when the batch was
    cancelled, 3 when one stopped on a limit."""
    reasons = {result.stop_reason for result in results}
    if "error" in reasons:
        return EXIT_FAILED
    if "cancelled" in reasons:
        return Cancelled.exit_code
    return LimitExceeded.exit_code if reasons - {"final"} else 0


def _summary(results: list[RLMResult], todo: int, skipped: int, elapsed: float) -> str:
    failed = sum(r.stop_reason == "error" for r in results)
    cancelled = sum(r.stop_reason == "cancelled" for r in results)
    limited = len(results) - failed - cancelled - sum(r.stop_reason == "final"
                                                      for r in results)
    parts = [f"{len(results) - failed - cancelled} done"]
    if limited:
        parts.append(f"{limited} of them stopped by a limit")
    parts.append(f"{failed} failed")
    if cancelled:
        parts.append(f"{cancelled} cancelled")
    if len(results) < todo:
        parts.append(f"{todo - len(results)} not run")
    parts.append(f"{skipped} skipped")
    cost = sum(r.cost_usd for r in results)
    return f"rlm batch: {' · '.join(parts)} · ${cost:.4f} · {elapsed:.1f}s"


def _build(options: RunOptions, trace: Path | None, executor: str, address: str | None
           ) -> RLM:
    backend = options.backend_name
    kwargs = backend_kwargs(backend, model=options.model, base_url=options.base_url,
                            script=options.script)
    return RLM(backend, kwargs, environment=options.env or "local",
               max_depth=options.max_depth, max_iterations=options.max_iterations,
               max_budget=options.max_budget, max_timeout=options.max_timeout,
               max_tokens=options.max_tokens, max_errors=options.max_errors,
               sub_backend=_sub_backend(options, backend), trace=trace, cache=options.cache,
               executor=executor,
               executor_kwargs=None if address is None else {"address": address})


def _trace_dir(trace: Path | None, no_trace: bool) -> Path | None:
    """``--trace DIR``, else the user folder's ``traces/``; ``None`` with ``--no-trace``."""
    if no_trace:
        return None
    folder = trace if trace is not None else user_dir() / "traces"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@click.command()
@click.argument("input_path", metavar="INPUT.jsonl",
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, metavar="OUTPUT.jsonl",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Results file (JSONL): one line per item, appended as each finishes.")
@click.option("--restart", is_flag=True,
              help="Empty OUTPUT first instead of skipping the items already done.")
@click.option("--executor", default="local", show_default=True, metavar="local|ray",
              help="Where items run: threads here, or tasks on a Ray cluster.")
@click.option("--address", metavar="ADDR",
              help="The Ray cluster (auto, host:6379, ray://head:10001); with --executor ray.")
@click.option("-j", "--concurrency", type=click.IntRange(min=1), metavar="N",
              help="Items run at once (default: 4 on threads, all with Ray).")
@click.option("--batch-budget", type=click.FloatRange(min=0), metavar="USD",
              help="Spending limit in USD for the whole batch (on top of --max-budget).")
@model_and_limit_options(
    max_iterations="REPL turns per item.", max_budget="Spending limit per item.",
    max_timeout="Time limit per item.", max_tokens="Token limit per item.",
    max_errors="Failed code blocks per item.")
@click.option("--trace", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="One JSONL trace per item in this folder (default: the user folder's "
                   "traces/).")
@click.option("--no-trace", is_flag=True, help="Write no trace files.")
@click.option("--cache", type=click.Path(path_type=Path), metavar="PATH",
              help="Serve repeated sub-calls from this cache (a directory or a SQLite file).")
@click.option("--script", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="JSON list of replies for the scripted backend (offline runs).")
@click.option("--schema", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="A JSON Schema file every answer must match (each line's output).")
def batch(input_path: Path, output: Path, restart: bool, executor: str, address: str | None,
          concurrency: int | None, batch_budget: float | None, trace: Path | None,
          no_trace: bool, **options: Any) -> None:
    """Answer every question of INPUT.jsonl; results in OUTPUT.jsonl.

    Each input line is {"id": ..., "question": ..., "context": ...} or {..., "context_path":
    PATH} (a file or folder, relative to INPUT's folder); without either the question is
    the input; "id" defaults to the line number.  Bad lines are reported and nothing runs.
    Result lines are RLMResult's fields plus "id", in the order the items finish.  Run the
    same command again to resume: ids already done are skipped, failed ones run again.

    Exit status: 0 every item answered, 4 some failed (stop_reason "error"), 3 some stopped
    by a limit, 130 cancelled (Ctrl-C), 2 bad arguments or input, 1 other errors.
    """
    if output.resolve() == input_path.resolve():
        raise ConfigError("-o must not be the input file")
    if address is not None and executor == "local":
        raise ConfigError("--address is for --executor ray")
    if trace is not None and no_trace:
        raise ConfigError("give --trace DIR or --no-trace, not both")
    run_options = RunOptions(**options)
    schema = _schema(run_options.schema)
    items = read_items(input_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = set() if restart else read_output(output)
    todo = [item for item in items if item.key not in done]
    skipped = len(items) - len(todo)
    if skipped:
        click.echo(f"rlm batch: skipping {skipped} item{'' if skipped == 1 else 's'} already "
                   f"done in {output} (--restart to run them again)", err=True)
    if restart and not todo:
        output.write_text("", encoding="utf-8")
    results = _run(todo, run_options, schema, output, restart=restart, skipped=skipped,
                   trace=_trace_dir(trace, no_trace) if todo else None, executor=executor,
                   address=address, concurrency=concurrency, batch_budget=batch_budget)
    code = _exit_code(results)
    if code == EXIT_FAILED:
        click.echo("rlm batch: run the same command again to retry the failed items",
                   err=True)
    if code:
        raise click.exceptions.Exit(code)


def _run(todo: list[Item], options: RunOptions, schema: dict[str, Any] | None, output: Path,
         *, restart: bool, skipped: int, trace: Path | None, executor: str,
         address: str | None, concurrency: int | None, batch_budget: float | None
         ) -> list[RLMResult]:
    """Run ``todo``, writing each result to ``output``; the results, in input order, of the
    items that finished.  The summary goes to stderr (also when interrupted)."""
    started = time.monotonic()
    if not todo:
        click.echo(_summary([], 0, skipped, 0.0), err=True)
        return []
    writer = _Results(output, todo, restart=restart)
    with _build(options, trace, executor, address) as model:
        _announce(model, options)
        click.echo(f"rlm batch: {len(todo)} item{'' if len(todo) == 1 else 's'} on "
                   f"executor={executor}, results in {output}", err=True)
        try:
            with _cancel_on_sigint(model):
                model.batch([item.question for item in todo],
                            [item.context for item in todo], batch_budget=batch_budget,
                            max_concurrency=concurrency, schema=schema, on_result=writer)
        except BaseException:
            if writer.results:  # a batch refused before it ran gets no summary
                click.echo(_summary(_ordered(writer), len(todo), skipped,
                                    time.monotonic() - started), err=True)
            raise
        finally:
            writer.close()
    results = _ordered(writer)
    click.echo(_summary(results, len(todo), skipped, time.monotonic() - started), err=True)
    return results


def _ordered(writer: _Results) -> list[RLMResult]:
    return [writer.results[i] for i in sorted(writer.results)]
