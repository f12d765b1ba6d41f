"""The report: Markdown tables and PNG plots of score vs input length."""

from __future__ import annotations

from rlm.bench.report import format_length, markdown, summarize, write_report
from rlm.bench.runner import run
from rlm.bench.tasks import instance_id, make_instances

PNG = b"\x89PNG\r\n\x1a\n"


def row(task, length, method, score, seed=0, **extra):
    return {"id": instance_id(task, length, seed), "task": task, "length": length, "seed": seed,
            "method": method, "model": "m", "score": score, "cost_usd": 0.01,
            "input_tokens": 1000, "output_tokens": 10, "latency_s": 2.0, "error": None,
            "extra": {"window_tokens": 8192}, **extra}


ROWS = [
    row("niah", 8192, "base", 1.0), row("niah", 8192, "base", 0.0, seed=1),
    row("niah", 32768, "base", 0.0), row("niah", 8192, "rlm", 1.0),
    row("niah", 32768, "rlm", 1.0), row("oolong", 8192, "rlm", 0.5625),
    row("oolong", 8192, "rlm", 0.0, error="BackendError: down"),  # replaces the row above
]


def test_summary_means_over_instances_and_keeps_the_last_row_per_key():
    cells = {(c["task"], c["length"], c["method"]): c for c in summarize(ROWS)}
    assert cells[("niah", 8192, "base")]["score"] == 0.5
    assert cells[("niah", 8192, "base")]["n"] == 2
    assert cells[("oolong", 8192, "rlm")]["errors"] == 1
    assert cells[("oolong", 8192, "rlm")]["score"] == 0.0


def test_markdown_has_a_score_table_per_task_and_every_run():
    text = markdown(ROWS)
    assert "### niah: score (mean over instances)" in text
    assert "| method | 8K | 32K |" in text
    assert "| base | 0.50 | 0.00 |" in text and "| rlm | 1.00 | 1.00 |" in text
    assert "| niah | 8K | base | m | 2 | 0.500 | 0.0100 | 1,000 | 10 | 2.0 | 0 |" in text
    assert markdown([]) == "_No results._\n"


def test_format_length():
    assert [format_length(n) for n in (8192, 2**20, 2**21, 1500)] == ["8K", "1M", "2M", "1,500"]


def test_write_report_renders_markdown_and_pngs(tmp_path):
    paths = write_report(ROWS, tmp_path / "report", command="rlm bench -t niah")
    names = sorted(p.name for p in paths)
    assert names == ["report.md", "score-niah.png", "score-oolong.png", "scores.png"]
    for path in paths[1:]:
        assert path.read_bytes()[:8] == PNG
    text = (tmp_path / "report" / "report.md").read_text()
    assert "rlm bench -t niah" in text and "![scores](scores.png)" in text


def test_report_of_a_real_run(tmp_path, perfect_model):
    instances = make_instances("niah", 2**13, 1) + make_instances("niah", 2**14, 1)
    rows = run(["niah"], [2**13, 2**14], ["base", "rlm"], perfect_model(instances),
               out_path=tmp_path / "r.jsonl", progress=False)
    paths = write_report(rows, tmp_path)
    assert "| rlm | 1.00 | 1.00 |" in paths[0].read_text()
    assert paths[1].read_bytes()[:8] == PNG
