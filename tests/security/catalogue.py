"""Running the hostile catalogue and rendering its results (shared by the test and the doc)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).parent
CATALOGUE = HERE / "hostile.toml"
EXPECTED = HERE / "expected.toml"
DOC = HERE.parents[1] / "docs" / "security.md"
START, END = "<!-- generated: security table -->", "<!-- end of generated table -->"


def entries() -> list[dict]:
    return tomllib.loads(CATALOGUE.read_text())["entry"]


def expected() -> dict[str, list[str]]:
    """Per environment, the ids of the entries it does NOT stop."""
    data = tomllib.loads(EXPECTED.read_text())
    return {env: table["not_stopped"] for env, table in data.items()}


def run(env: str, out: Path, *, timeout_s: float = 900) -> dict[str, dict]:
    """Run every entry against ``env``; an entry that kills its host process is recorded
    as not stopped and the driver goes on from the next entry in a new process."""
    catalogue = entries()
    out.unlink(missing_ok=True)
    results: dict[str, dict] = {}
    first = 0
    while first < len(catalogue):
        subprocess.run(
            [sys.executable, str(HERE / "driver.py"), env, str(CATALOGUE), str(out), str(first)],
            start_new_session=True, timeout=timeout_s, check=False,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(HERE.parents[1]),
                 "RLM_HOSTILE_DIR": str(out.parent),
                 "OPENAI_API_KEY": "sk-hostile-" + secrets.token_hex(8)},
        )
        last_start = None
        for line in out.read_text().splitlines():
            record = json.loads(line)
            if record["event"] == "start":
                last_start = record
            else:
                results[record["id"]] = record
        if len(results) == len(catalogue):
            break
        if last_start is None:
            raise RuntimeError(f"the driver for {env} stopped without running an entry")
        if last_start["id"] not in results:
            results[last_start["id"]] = {"id": last_start["id"], "verdict": "not stopped",
                                         "detail": "the attack killed the host process"}
        first = last_start["index"] + 1
    return results


def table() -> str:
    """The Markdown table environment x threat, from the verified expectations."""
    known = expected()
    envs = list(known)
    rows = ["| threat | " + " | ".join(f"`{e}`" for e in envs) + " |",
            "|---|" + "---|" * len(envs)]
    for entry in entries():
        cells = ["not stopped" if entry["id"] in known[e] else "stopped" for e in envs]
        rows.append(f"| {entry['threat']} (`{entry['id']}`) | " + " | ".join(cells) + " |")
    totals = [f"{len(entries()) - len(known[e])}/{len(entries())}" for e in envs]
    rows.append("| **stopped** | " + " | ".join(f"**{t}**" for t in totals) + " |")
    return "\n".join(rows)


def render_doc() -> str:
    text = DOC.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table()}\n{END}{tail}"


if __name__ == "__main__":  # python tests/security/catalogue.py: rewrite the doc's table
    DOC.write_text(render_doc())
    print(f"updated {DOC}")
