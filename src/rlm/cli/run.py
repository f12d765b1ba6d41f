"""``rlm run``: build an ``RLM`` from flags, answer one question, print only the answer.

The flags become one ``RunOptions``; ``answer_question`` builds the ``RLM`` from it and runs
it (``rlm demo`` builds its own ``RunOptions``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from rlm import config
from rlm.api import RLM
from rlm.bridge.schema import to_json_schema
from rlm.cli.backend_flags import assembly_progress, backend_kwargs, model_and_limit_options
from rlm.config import user_dir
from rlm.errors import Cancelled, ConfigError, LimitExceeded, RLMError
from rlm.result import RLMResult

__all__ = ["RunOptions", "answer_question", "run"]


@dataclass(frozen=True)
class RunOptions:
    """What ``rlm run`` builds its ``RLM`` from: one field per flag, ``None`` (or ``False``)
    when the flag is not given, which leaves the library's default."""

    backend: str | None = None
    model: str | None = None
    base_url: str | None = None
    env: str | None = None
    max_depth: int | None = None
    max_iterations: int | None = None
    max_budget: float | None = None
    max_timeout: float | None = None
    max_tokens: int | None = None
    max_errors: int | None = None
    sub_backend: str | None = None
    sub_model: str | None = None
    trace: Path | None = None
    no_trace: bool = False
    verbose: bool = False
    script: Path | None = None
    schema: Path | None = None
    cache: Path | None = None

    def __post_init__(self) -> None:
        if self.trace is not None and self.no_trace:
            raise ConfigError("give --trace PATH or --no-trace, not both")

    @property
    def backend_name(self) -> str:
        """``--backend``, else ``scripted`` with ``--script``, else the CLI's default."""
        return self.backend or ("scripted" if self.script else config.DEFAULT_BACKEND)


def _context(spec: str | None) -> Any:
    """``None``: no separate input; ``-``: stdin; else a file or folder ``Path``."""
    if spec is None:
        return None
    if spec == "-":
        return sys.stdin.read()
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(f"context file not found: {spec}")
    return path


def _schema(path: Path | None) -> dict[str, Any] | None:
    """The JSON Schema in the ``--schema`` file, checked (``ConfigError`` when it is not)."""
    if path is None:
        return None
    try:
        return to_json_schema(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"--schema {path}: {exc}") from exc


def _sub_backend(options: RunOptions, backend: str) -> dict[str, Any] | None:
    """``--sub-backend`` / ``--sub-model`` as a spec; ``--base-url`` goes along when the
    sub-calls use the root's backend."""
    if not (options.sub_backend or options.sub_model):
        return None
    name = options.sub_backend or backend
    sub: dict[str, Any] = {"backend": name, **assembly_progress(name)}
    if options.sub_model:
        sub["model"] = options.sub_model
    if options.base_url and not options.sub_backend:
        sub["base_url"] = options.base_url
    return sub


def _trace(options: RunOptions) -> Path | None:
    """``--trace FILE``, else one file per run under the user folder (none: ``--no-trace``)."""
    if options.trace is not None:
        options.trace.parent.mkdir(parents=True, exist_ok=True)
        options.trace.touch()  # an existing file is appended to, whatever its name
        return options.trace
    return None if options.no_trace else user_dir() / "traces"


def _build(options: RunOptions) -> RLM:
    backend = options.backend_name
    kwargs = backend_kwargs(backend, model=options.model, base_url=options.base_url,
                            script=options.script)
    sub, trace = _sub_backend(options, backend), _trace(options)
    return RLM(backend, kwargs, environment=options.env or "local",
               max_depth=options.max_depth, max_iterations=options.max_iterations,
               max_budget=options.max_budget, max_timeout=options.max_timeout,
               max_tokens=options.max_tokens, max_errors=options.max_errors,
               verbose=options.verbose, sub_backend=sub, trace=trace, cache=options.cache)


@contextlib.contextmanager
def _cancel_on_sigint(model: RLM) -> Iterator[None]:
    """First Ctrl-C cancels the run (it returns its partial answer); the second aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def first_press(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        # Straight to fd 2: the handler may run inside a REPL cell, where sys.stderr is the
        # cell's capture proxy (and click would cache a wrapper around it).
        with contextlib.suppress(OSError):
            os.write(2, b"rlm: cancelling; press Ctrl-C again to abort\n")
        model.cancel()

    previous = signal.signal(signal.SIGINT, first_press)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None
                      else signal.default_int_handler)


@contextlib.contextmanager
def _stdout_kept_for_the_answer() -> Iterator[None]:
    """While the run goes, file descriptor 1 is the terminal's stderr: code that writes to
    fd 1 directly (model code in the ``local`` environment, a C library) cannot mix into
    the answer or the ``--json`` object printed afterwards."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout at all
        yield
        return
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _summary(result: RLMResult) -> str:
    calls = sum(u.calls for u in result.usage.values())
    return (f"rlm: {result.stop_reason} · "
            f"{result.iterations} iteration{'' if result.iterations == 1 else 's'} · "
            f"{calls} LM call{'' if calls == 1 else 's'} · "
            f"{result.input_tokens:,} in / {result.output_tokens:,} out tokens · "
            f"${result.cost_usd:.4f} · {result.elapsed_s:.1f}s")


def _exit_code(stop_reason: str) -> int:
    if stop_reason == "final":
        return 0
    return Cancelled.exit_code if stop_reason == "cancelled" else LimitExceeded.exit_code


@click.command()
@click.argument("question")
@click.option("--context", "context", metavar="PATH|-",
              help="The input: a file, a folder, or - for stdin. Without it, QUESTION is "
                   "the input.")
@model_and_limit_options(max_iterations="REPL turns for the whole tree.")
@click.option("--trace", type=click.Path(dir_okay=False, path_type=Path),
              metavar="PATH", help="Append the trace to this JSONL file.")
@click.option("--no-trace", is_flag=True, help="Write no trace file.")
@click.option("--cache", type=click.Path(path_type=Path), metavar="PATH",
              help="Serve repeated sub-calls from this cache (a directory or a SQLite file).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("-v", "--verbose", is_flag=True, help="Draw the live call tree on stderr.")
@click.option("--script", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="JSON list of replies for the scripted backend (offline runs).")
@click.option("--schema", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="A JSON Schema file: the answer must match it; stdout gets it as JSON.")
def run(question: str, context: str | None, as_json: bool, **options: Any) -> None:
    """Answer QUESTION, over the --context input when given.

    Stdout carries only the answer (or one JSON object with --json); progress, usage and
    the trace path go to stderr.  Exit status: 0 answered, 3 stopped by a limit (the
    partial answer is still printed), 130 cancelled, 2 bad arguments, 1 other errors.
    """
    result = answer_question(question, _context(context), RunOptions(**options),
                             as_json=as_json)
    code = _exit_code(result.stop_reason)
    if code:
        click.echo(f"rlm: stopped early ({result.stop_reason}); the answer may be partial",
                   err=True)
        raise click.exceptions.Exit(code)


def _announce(model: RLM, options: RunOptions) -> None:
    """What runs where, on stderr (with ``-v`` the live call tree shows it instead)."""
    root = model.router.for_depth(0)
    if root.name == "local":
        click.echo(f"rlm: running the embedded model {root.model_name} offline "
                   "(llama.cpp on this CPU); use -b openai -m MODEL for a remote model",
                   err=True)
    if not options.verbose:
        parts = [f"backend={root.name}", f"model={root.model_name}",
                 f"env={options.env or 'local'}"]
        if model.router.sub is not None:
            parts.append(f"sub={model.router.sub.name}:{model.router.sub.model_name}")
        click.echo("rlm: " + " ".join(parts), err=True)


def answer_question(question: str, data: Any, options: RunOptions, *, as_json: bool = False
                    ) -> RLMResult:
    """Build the RLM from ``options``, answer ``question`` (over ``data`` unless ``None``),
    print the answer on stdout (with ``--schema``, the parsed answer as JSON when it
    matches) and the summary on stderr."""
    schema = _schema(options.schema)
    with _build(options) as model:
        _announce(model, options)
        with _cancel_on_sigint(model), _stdout_kept_for_the_answer():
            try:
                result = (model.completion(question, schema=schema) if data is None
                          else model.completion(question, context=data, schema=schema))
            except SystemExit as exc:  # never leave with the status some code chose, silently
                raise RLMError(f"the run was ended by SystemExit({exc.code!r}) instead of "
                               "finishing; this is a bug of rlm or of a plugin") from exc
    if as_json:
        click.echo(json.dumps(result.to_dict(), ensure_ascii=False, default=str))
    elif schema is not None and result.output_error is None:
        click.echo(json.dumps(result.output, ensure_ascii=False))
    else:
        click.echo(result.response)
    if result.output_error is not None:
        click.echo(f"rlm: {result.output_error}", err=True)
    click.echo(_summary(result), err=True)
    if result.trace_path:
        click.echo(f"rlm: trace written to {result.trace_path}", err=True)
    return result
