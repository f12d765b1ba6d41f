"""``rlm bench``: run the benchmark grid (tasks x lengths x methods), append JSONL, report."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from rlm import config as rlm_config
from rlm.cli.backend_flags import backend_kwargs
from rlm.errors import ConfigError

__all__ = ["bench", "parse_lengths"]

_SIZE = re.compile(r"^(\d+)\s*([kKmM]?)$")
_POWER = re.compile(r"^2\s*(?:\^|\*\*)\s*(\d+)$")


def parse_lengths(text: str) -> list[int]:
    """``"8192,2^15,64K,1M"`` -> ``[8192, 32768, 65536, 1048576]`` (tokens)."""
    lengths = []
    for item in (part.strip() for part in text.split(",")):
        power, size = _POWER.match(item), _SIZE.match(item)
        if power:
            lengths.append(2 ** int(power.group(1)))
        elif size:
            scale = {"": 1, "k": 2**10, "m": 2**20}[size.group(2).lower()]
            lengths.append(int(size.group(1)) * scale)
        else:
            raise ConfigError(f"cannot read length {item!r}: write 8192, 2^13, 8K or 1M")
    return lengths


def _names(values: tuple[str, ...], known: list[str]) -> list[str]:
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    return known if not names or names == ["all"] else names


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"backend option {text!r} must be KEY=VALUE")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


@click.command()
@click.option("-t", "--task", "tasks", multiple=True, metavar="NAME[,NAME]",
              help="Tasks to run (default: all): niah, oolong, oolong-pairs, multihop, codeqa.")
@click.option("-l", "--lengths", default="2^13,2^15", show_default=True, metavar="LIST",
              help="Context lengths in tokens: 8192, 2^13, 8K, 1M, comma-separated.")
@click.option("--methods", "methods", multiple=True, metavar="NAME[,NAME]",
              help="Methods (default: all): base, rlm, rlm-no-sub, bm25, summarize.")
@click.option("-b", "--backend", metavar="NAME",
              help="Backend name (default: the embedded local model).")
@click.option("-m", "--model", metavar="NAME", help="Model name for the backend.")
@click.option("--base-url", metavar="URL", help="API base URL (OpenAI-compatible servers).")
@click.option("-o", "--backend-option", "backend_options", multiple=True, metavar="KEY=VALUE",
              help="More backend arguments, e.g. -o n_ctx=4096 (JSON values).")
@click.option("-n", "--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="Instances (seeds) per task and length.")
@click.option("--seed", type=int, default=0, show_default=True, help="First seed.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("results.jsonl"), show_default=True,
              help="Results file (JSONL, appended; rows already there are skipped).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write report.md and PNG plots into this folder.")
@click.option("-j", "--concurrency", type=click.IntRange(min=1), default=1, show_default=True,
              help="Instances run at once.")
@click.option("--window", type=click.IntRange(min=256), metavar="TOKENS",
              help="The model's window for base, bm25 and summarize (default: the backend's "
                   "n_ctx, else 128000).")
@click.option("--max-iterations", type=click.IntRange(min=1), default=10, show_default=True,
              help="REPL turns per RLM run.")
@click.option("--max-timeout", type=float, metavar="S", help="Time limit per method run.")
@click.option("--retry-errors", is_flag=True, help="Run again the rows that failed.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--cache", type=click.Path(path_type=Path), metavar="PATH",
              help="Serve the RLM methods' repeated sub-calls from this cache (a directory "
                   "or a SQLite file); a second run of a grid reuses the first's.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
              show_default=True, help="Run instances in threads here, or as tasks on a Ray "
                                      "cluster (extra 'ray'; -j: how many at once).")
@click.option("--address", metavar="ADDR",
              help="The Ray cluster for --executor ray (default: RAY_ADDRESS, or local).")
@click.option("--script", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="JSON list of replies for the scripted backend (offline runs).")
def bench(tasks: tuple[str, ...], lengths: str, methods: tuple[str, ...], backend: str | None,
          model: str | None, base_url: str | None, backend_options: tuple[str, ...],
          instances: int, seed: int, out: Path, report_dir: Path | None, concurrency: int,
          window: int | None, max_iterations: int, max_timeout: float | None,
          retry_errors: bool, no_progress: bool, script: Path | None,
          cache: Path | None, executor: str, address: str | None) -> None:
    """Compare methods on the benchmark tasks at several context lengths.

    One JSONL row per (instance, method) is appended to --out as it finishes; run the
    same command again to resume.  The summary table goes to stderr; --report DIR also
    writes report.md and the plots of score vs input length.
    """
    from rlm.bench.methods import METHODS, MethodConfig
    from rlm.bench.report import markdown, write_report
    from rlm.bench.runner import run
    from rlm.bench.tasks import TASKS

    name = backend or ("scripted" if script else rlm_config.DEFAULT_BACKEND)
    kwargs = backend_kwargs(name, model=model, base_url=base_url, script=script,
                            options=dict(_option(o) for o in backend_options))
    config = MethodConfig(window_tokens=window, max_iterations=max_iterations,
                          max_timeout=max_timeout, cache=None if cache is None else str(cache))
    rows = run(_names(tasks, list(TASKS)), parse_lengths(lengths),
               _names(methods, list(METHODS)), name, kwargs, instances, out, concurrency,
               seed=seed, config=config, progress=not no_progress, retry_errors=retry_errors,
               executor=executor,
               executor_kwargs={"address": address} if executor == "ray" and address else None)
    click.echo(markdown(rows), err=True, nl=False)
    click.echo(f"rlm bench: {len(rows)} results in {out}", err=True)
    if report_dir is not None:
        command = "rlm " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else None
        paths = write_report(rows, report_dir, command=command)
        click.echo(f"rlm bench: report in {paths[0]}", err=True)
