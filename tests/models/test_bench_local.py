"""The benchmark harness on the embedded model: a small S-NIAH grid, end to end, reported.

Scores are not asserted (a 1.5B model on 2 cores); the run must complete without errors
and produce the report.  ``base`` is given a 2,048-token window so the test stays short
(the local backend's real window is 8,192 tokens).
"""

from __future__ import annotations

import pytest

from rlm.bench.methods import MethodConfig
from rlm.bench.report import write_report
from rlm.bench.runner import read_rows, run

pytestmark = [pytest.mark.model, pytest.mark.slow]


def test_small_niah_grid_on_the_local_model(local_backend, tmp_path):
    out = tmp_path / "results.jsonl"
    config = MethodConfig(window_tokens=2048, max_iterations=6, max_timeout=150)
    rows = run(["niah"], [2**13, 2**15], ["rlm", "base"], local_backend, instances=1,
               out_path=out, config=config, progress=False)
    assert len(rows) == 4 == len(read_rows(out))
    for row in rows:
        assert row["error"] is None, row
        assert row["model"] == local_backend.model_name
        assert row["calls"] >= 1 and row["input_tokens"] > 0 and row["latency_s"] > 0
    base = [r for r in rows if r["method"] == "base"]
    assert all(r["extra"]["seen_fraction"] < 0.5 for r in base)
    paths = write_report(rows, tmp_path / "report")
    assert "| rlm |" in paths[0].read_text()
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
