"""``rlm run --cache`` and ``rlm bench --cache``: a second run gets its sub-calls from the cache."""

from __future__ import annotations

import json

from rlm.cli import cli
from tests.conftest import repl

ROOT = repl("print(llm_query('Name a colour.'))\nFINAL(llm_query('Name a colour.'))")


def test_a_second_run_is_served_its_sub_calls_from_the_cache(cli_runner, script, tmp_path):
    cache = tmp_path / "cache"
    first = cli_runner.invoke(cli, ["run", "q", "--script", str(script(ROOT, "teal", "ochre")),
                                    "--cache", str(cache), "--no-trace"])
    assert first.exit_code == 0, first.output
    assert first.stdout.strip() == "ochre"
    # the script has no reply left for the sub-calls: only the cache can answer them, in
    # the order the first run asked (the second identical call is its own entry)
    again = cli_runner.invoke(cli, ["run", "q", "--script", str(script(ROOT)), "--cache",
                                    str(cache), "--no-trace", "--json"])
    assert again.exit_code == 0, again.output
    result = json.loads(again.stdout)
    assert result["response"] == "ochre"
    assert any(key.startswith("cache:") for key in result["usage"])
