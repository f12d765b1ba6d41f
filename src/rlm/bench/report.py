"""The report of a results file: Markdown tables and PNG plots of score vs input length.

``write_report(rows, folder)`` writes ``report.md`` (a score table per task, method x
length, then one line per task x length x method with score, cost, input/output tokens
and latency, all means over instances) and, like the paper's Figure 1, ``scores.png``
(one panel per task) and ``score-<task>.png``.  matplotlib is imported only to plot.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

from rlm import MissingDependencyError
from rlm.bench.runner import row_key

__all__ = ["format_length", "markdown", "plot", "summarize", "write_report"]

Cell = dict[str, Any]


def format_length(tokens: int) -> str:
    """``8192`` -> ``8K``, ``1048576`` -> ``1M`` (other sizes in thousands)."""
    if tokens >= 2**20 and tokens % 2**20 == 0:
        return f"{tokens // 2**20}M"
    if tokens >= 2**10 and tokens % 2**10 == 0:
        return f"{tokens // 2**10}K"
    return f"{tokens:,}"


def _latest(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return list({row_key(r): r for r in rows}.values())


def summarize(rows: Iterable[Mapping[str, Any]]) -> list[Cell]:
    """One cell per (task, length, method, model): means over instances, errors counted."""
    groups: dict[tuple[str, int, str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row in _latest(rows):
        groups[(row["task"], int(row["length"]), row["method"], str(row.get("model")))].append(row)
    cells = []
    for (task, length, method, model), group in sorted(groups.items()):
        def mean(name: str, group: list[Mapping[str, Any]] = group) -> float:
            return fmean(float(r.get(name) or 0.0) for r in group)

        cells.append({
            "task": task, "length": length, "method": method, "model": model,
            "n": len(group), "errors": sum(1 for r in group if r.get("error")),
            "score": mean("score"), "cost_usd": mean("cost_usd"),
            "input_tokens": mean("input_tokens"), "output_tokens": mean("output_tokens"),
            "latency_s": mean("latency_s"),
            "window_tokens": max((int((r.get("extra") or {}).get("window_tokens") or 0)
                                  for r in group), default=0),
        })
    return cells


def _order(values: Iterable[str], preferred: Sequence[str]) -> list[str]:
    seen = list(dict.fromkeys(values))
    return [v for v in preferred if v in seen] + sorted(v for v in seen if v not in preferred)


def _methods(cells: list[Cell]) -> list[str]:
    from rlm.bench.methods import METHODS

    return _order((c["method"] for c in cells), list(METHODS))


def _tasks(cells: list[Cell]) -> list[str]:
    from rlm.bench.tasks import TASKS

    return _order((c["task"] for c in cells), list(TASKS))


def markdown(rows: Iterable[Mapping[str, Any]]) -> str:
    """The Markdown tables of the report (see the module docstring)."""
    cells = summarize(rows)
    if not cells:
        return "_No results._\n"
    out: list[str] = []
    for task in _tasks(cells):
        mine = [c for c in cells if c["task"] == task]
        lengths = sorted({c["length"] for c in mine})
        out += [f"### {task}: score (mean over instances)", "",
                "| method | " + " | ".join(format_length(n) for n in lengths) + " |",
                "|---" * (len(lengths) + 1) + "|"]
        for method in _methods(mine):
            by = {c["length"]: c for c in mine if c["method"] == method}
            out.append(f"| {method} | " + " | ".join(
                f"{by[n]['score']:.2f}" if n in by else "" for n in lengths) + " |")
        out.append("")
    out += ["### Every run", "",
            "| task | length | method | model | n | score | cost ($) | input tokens | "
            "output tokens | latency (s) | errors |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        out.append(
            f"| {c['task']} | {format_length(c['length'])} | {c['method']} | {c['model']} | "
            f"{c['n']} | {c['score']:.3f} | {c['cost_usd']:.4f} | {c['input_tokens']:,.0f} | "
            f"{c['output_tokens']:,.0f} | {c['latency_s']:.1f} | {c['errors']} |")
    return "\n".join(out) + "\n"


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingDependencyError("plots need matplotlib: pip install 'rlm[bench]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _panel(ax: Any, cells: list[Cell], task: str) -> None:
    mine = [c for c in cells if c["task"] == task]
    lengths = sorted({c["length"] for c in mine})
    for method in _methods(mine):
        points = sorted((c["length"], 100 * c["score"]) for c in mine if c["method"] == method)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
    window = max((c["window_tokens"] for c in mine), default=0)
    if window and lengths and lengths[0] <= window * 4 and window <= lengths[-1] * 4:
        ax.axvline(window, color="grey", linestyle="--", linewidth=1)
        ax.annotate(f"window {format_length(window)}", (window, 102), fontsize=7,
                    color="grey", ha="center")
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [format_length(n) for n in lengths])
    ax.set_ylim(-3, 108)
    ax.set_title(task)
    ax.set_xlabel("input length (tokens)")
    ax.set_ylabel("score (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot(rows: Iterable[Mapping[str, Any]], folder: str | Path) -> list[Path]:
    """Write ``scores.png`` (every task) and ``score-<task>.png``; return their paths."""
    plt = _pyplot()
    cells = summarize(rows)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tasks = _tasks(cells)
    paths: list[Path] = []
    if not tasks:
        return paths
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        _panel(ax, cells, task)
    figure.tight_layout()
    paths.append(folder / "scores.png")
    figure.savefig(paths[-1], dpi=120)
    plt.close(figure)
    for task in tasks:
        figure, ax = plt.subplots(figsize=(5, 3.8))
        _panel(ax, cells, task)
        figure.tight_layout()
        paths.append(folder / f"score-{task}.png")
        figure.savefig(paths[-1], dpi=120)
        plt.close(figure)
    return paths


def write_report(rows: Iterable[Mapping[str, Any]], folder: str | Path, *,
                 title: str = "rlm bench", command: str | None = None) -> list[Path]:
    """Write ``report.md`` and the plots into ``folder``; return every path written."""
    rows = list(rows)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = plot(rows, folder)
    text = [f"# {title}", ""]
    if command:
        text += ["```", command, "```", ""]
    text.append(markdown(rows))
    text += [f"![{p.stem}]({p.name})" for p in images[:1]]
    report = folder / "report.md"
    report.write_text("\n".join(text) + "\n", encoding="utf-8")
    return [report, *images]
