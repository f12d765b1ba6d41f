"""``rlm bench --executor ray``: the grid's instances as Ray tasks, resumable."""

from __future__ import annotations

import sys

import ray

import tests.bench.oracle
from rlm.bench.methods import MethodConfig
from rlm.bench.runner import read_rows, run
from rlm.bench.tasks import make_instance

ray.cloudpickle.register_pickle_by_value(tests.bench.oracle)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SMALL = 2**13


def test_a_grid_runs_on_the_cluster_with_the_scores_of_a_local_run_and_resumes(
        address, tmp_path):
    instances = [make_instance("niah", SMALL, seed) for seed in range(4)]
    backend = {"backend": "scripted", "responses": tests.bench.oracle.oracle(instances),
               "model": "perfect"}
    config = MethodConfig(window_tokens=4096)
    local = run(["niah"], [SMALL], ["base", "rlm"], backend, instances=4,
                out_path=tmp_path / "local.jsonl", config=config, progress=False)
    out = tmp_path / "ray.jsonl"
    remote = run(["niah"], [SMALL], ["base", "rlm"], backend, instances=4, out_path=out,
                 config=config, progress=False, concurrency=4, executor="ray",
                 executor_kwargs={"address": address})

    def scores(rows):
        return sorted((r["id"], r["method"], r["score"]) for r in rows)

    assert scores(remote) == scores(local) and len(remote) == 8
    assert all(r["error"] is None for r in remote)
    again = run(["niah"], [SMALL], ["base", "rlm"], backend, instances=4, out_path=out,
                config=config, progress=False, executor="ray",
                executor_kwargs={"address": address})
    assert len(again) == 8 and len(read_rows(out)) == 8  # nothing ran twice
