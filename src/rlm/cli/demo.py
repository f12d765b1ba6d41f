"""``rlm demo``: the main job, offline: an RLM over a long generated log, checked."""

from __future__ import annotations

import click

from rlm.bench.documents import service_log
from rlm.cli.run import RunOptions, answer_question
from rlm.config import user_dir

__all__ = ["demo"]


@click.command()
@click.option("--chars", type=int, default=160_000, show_default=True,
              help="Size of the generated log in characters.")
@click.option("--seed", type=int, default=7, show_default=True, help="Which log to generate.")
@click.option("-b", "--backend", metavar="NAME", help="Backend (default: the embedded model).")
@click.option("-m", "--model", metavar="NAME", help="Model name for the backend.")
@click.option("--max-iterations", type=int, default=8, show_default=True)
@click.option("-v/-q", "--verbose/--quiet", default=True, help="Draw the live call tree.")
def demo(chars: int, seed: int, backend: str | None, model: str | None, max_iterations: int,
         verbose: bool) -> None:
    """Answer a question about a generated log far larger than the model's window.

    The log is written under the rlm user directory, the answer is checked against the
    one the generator hid, and the exit status is 0 only when it is right.
    """
    document = service_log(chars, seed=seed)
    folder = user_dir() / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"service-{seed}-{chars}.log"
    path.write_text(document.text, encoding="utf-8")
    click.echo(f"rlm demo: {len(document.text):,} characters of log in {path}", err=True)
    click.echo(f"rlm demo: question: {document.question}", err=True)
    options = RunOptions(backend=backend, model=model, max_iterations=max_iterations,
                         verbose=verbose)
    result = answer_question(document.question, path, options)
    got = result.response.strip().strip("\"'`. ")
    if got == document.answer:
        click.echo(f"rlm demo: correct (the hidden answer is {document.answer})", err=True)
        return
    click.echo(f"rlm demo: WRONG: expected {document.answer!r}", err=True)
    raise click.exceptions.Exit(1)
