"""Every hostile snippet against every environment; the results must match the table the
documentation publishes (docs/security.md), which is generated from tests/security/expected.toml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.environments.conftest import ENVIRONMENTS, require_available
from tests.security import catalogue

pytestmark = pytest.mark.slow
RESULTS = Path(__file__).parents[2] / "build" / "security"


def test_the_catalogue_is_large_and_well_formed():
    entries = catalogue.entries()
    assert len(entries) >= 30
    assert len({e["id"] for e in entries}) == len(entries)
    assert all(e["threat"] and e["code"].strip() for e in entries)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_environment_stops_what_the_docs_claim(env, tmp_path):
    require_available(env)
    known = catalogue.expected()
    assert env in known, f"record the results of {env} in tests/security/expected.toml"
    results = catalogue.run(env, tmp_path / "results.jsonl")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{env}.json").write_text(json.dumps(results, indent=1))
    observed = sorted(i for i, r in results.items() if r["verdict"] == "not stopped")
    details = {i: results[i]["detail"] for i in set(observed) ^ set(known[env])}
    assert observed == sorted(known[env]), f"{env}: differences: {details}"


def test_the_published_table_is_current():
    assert catalogue.DOC.read_text() == catalogue.render_doc(), (
        "docs/security.md is out of date: run python tests/security/catalogue.py")
