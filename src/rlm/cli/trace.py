"""``rlm trace show | view | html | export``: read a trace in the terminal, a browser or a
file, or export it as training data; ``rlm replay``: run it again on its recorded replies."""

from __future__ import annotations

import json
import sys
import webbrowser
from pathlib import Path

import click

from rlm.config import user_dir
from rlm.errors import ConfigError
from rlm.trace import load, load_all

__all__ = ["replay", "trace"]


@click.group()
def trace() -> None:
    """Read trace files written by `rlm run`."""


def _trace_file(path: Path | None, *, may_be_missing: bool = False) -> Path:
    """``path`` itself, or the newest ``*.jsonl`` in a folder (default: the user traces)."""
    folder = user_dir() / "traces" if path is None else path
    if folder.is_dir():
        files = sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
        if not files:
            raise ConfigError(f"no trace files in {folder}")
        return files[-1]
    if not folder.is_file() and not may_be_missing:
        raise ConfigError(f"trace file not found: {folder}")
    return folder


_PATH = click.argument("path", required=False, type=click.Path(path_type=Path))


@trace.command("show")
@_PATH
@click.option("--json", "as_json", is_flag=True, help="Print the tree as JSON.")
def show(path: Path | None, as_json: bool) -> None:
    """Print the call tree of the last run in PATH.

    PATH is a trace file or a folder (its newest trace); without PATH, the newest trace in
    the user folder ($RLM_USER_PATH/traces).
    """
    node = load(_trace_file(path))
    if as_json:
        click.echo(json.dumps(node.to_dict(), indent=2, ensure_ascii=False, default=str))
        return
    from rlm.trace.console import print_tree

    print_tree(node, file=sys.stdout)


@trace.command("view")
@_PATH
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port on 127.0.0.1 (0: a free one).")
@click.option("--no-open", is_flag=True, help="Print the URL without opening a browser.")
@click.option("--follow", is_flag=True,
              help="Keep reading the file as a run writes it (the page updates).")
def view(path: Path | None, port: int, no_open: bool, follow: bool) -> None:
    """Open the trace in PATH in a web browser (a local page; Ctrl-C stops it).

    PATH as for `rlm trace show`.  With --follow the file may still be empty or missing
    (`rlm run ... --trace out.jsonl` in another terminal).
    """
    from rlm.trace.web import TraceServer

    file = _trace_file(path, may_be_missing=follow)
    if not follow:
        load_all(file)  # refuse a file that is not a trace before serving it
    server = TraceServer(file, port=port, follow=follow)
    click.echo(f"rlm trace viewer: {server.url} (Ctrl-C to stop)", err=True)
    click.echo(server.url)
    if not no_open:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


@trace.command("html")
@_PATH
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The HTML file to write.")
def html(path: Path | None, output: Path) -> None:
    """Write the trace in PATH as one self-contained HTML file (opens offline)."""
    from rlm.trace.web import render_html

    file = _trace_file(path)
    load_all(file)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_html(file), encoding="utf-8")
    click.echo(f"wrote {output}", err=True)


@trace.command("export")
@_PATH
@click.option("--format", "fmt", type=click.Choice(["chat-jsonl"]), default="chat-jsonl",
              show_default=True, help="What to write (docs/trace-format.md, Export).")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="The file to write (default: stdout).")
@click.option("--results", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An `rlm bench` results file: runs get the score of the row with "
                   "their question.")
@click.option("--method", default="rlm", show_default=True,
              help="With --results: the bench method whose rows give the score.")
def export(path: Path | None, fmt: str, output: Path | None, results: Path | None,
           method: str) -> None:
    """Write each node's conversation in PATH as one JSONL record (for fine-tuning or as
    RL rollouts).  PATH as for `rlm trace show`."""
    from rlm.trace.export import chat_records

    roots = load_all(_trace_file(path))
    rows: list[dict[str, object]] = []
    if results is not None:
        from rlm.bench.runner import read_rows

        rows = read_rows(results)
    lines = [json.dumps(record, ensure_ascii=False, default=str)
             for record in chat_records(roots, rows, method=method)]
    text = "".join(line + "\n" for line in lines)
    if output is None:
        click.echo(text, nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    click.echo(f"wrote {len(lines)} records to {output}", err=True)


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--context", "context", metavar="PATH|-",
              help="The run's input (a trace does not store it): a file, a folder, or - "
                   "for stdin.")
@click.option("-e", "--env", "environment", default="local", show_default=True,
              help="Environment to replay in (`rlm envs`).")
@click.option("--run", "run_index", type=int, default=-1,
              help="Which run of a file with several (0 = the first; default: the last).")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as one JSON object.")
def replay(path: Path, context: str | None, environment: str, run_index: int,
           as_json: bool) -> None:
    """Re-run the run recorded in PATH with its recorded model replies.

    No model is called: each LM call gets the reply the trace holds.  Reports the first
    place the new run departs from the recording (a code block whose output differs, a
    call with no recorded reply); exits 1 when it does.  Limits on money, time and tokens
    are lifted (a replay costs nothing); depth, turns and errors are as recorded.
    """
    from rlm import RLM
    from rlm.backends.scripted import ScriptedBackend
    from rlm.trace.replay import Recording, compare

    roots = load_all(_trace_file(path))
    try:
        recorded = roots[run_index]
    except IndexError:
        raise ConfigError(f"{path} holds {len(roots)} runs; --run {run_index} is not one") \
            from None
    recording = Recording(recorded)
    limits = dict(recorded.start.data.get("limits", {})) if recorded.start else {}
    keep = {k: limits.get(k) for k in ("max_depth", "max_iterations", "max_errors")
            if limits.get(k) is not None}
    data: object = None
    if context == "-":
        data = sys.stdin.read()
    elif context is not None:
        data = Path(context).expanduser()
        if not data.exists():
            raise ConfigError(f"context file not found: {context}")
    question = recorded.question
    with RLM(backend=ScriptedBackend(recording.responses), environment=environment,
             **keep) as model:
        result = (model.completion(data) if question is None
                  else model.completion(question, context=data))
    divergence = compare(recorded, result.trace) or next(iter(recording.missing), None)
    outcome = {"diverged": divergence is not None, "response": result.response,
               "recorded_response": recorded.response, "stop_reason": result.stop_reason,
               "divergence": None if divergence is None else divergence.to_dict()}
    if as_json:
        click.echo(json.dumps(outcome, ensure_ascii=False, default=str))
    elif divergence is None:
        click.echo(f"replay matches the recording ({len(list(recorded.walk()))} nodes); "
                   f"answer: {result.response}")
    else:
        click.echo(f"replay diverged: {divergence.describe()}")
    if divergence is not None:
        raise SystemExit(1)
