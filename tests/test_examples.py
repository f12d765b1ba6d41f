"""Every script in examples/ runs offline, exits 0 and prints what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

#: script -> lines its output must contain.
EXPECTED = {
    "quickstart.py": ["response:    192 ERROR lines", "stop_reason: final"],
    "batched_subcalls.py": [
        "response:    Lisbon -> Oslo -> Nairobi -> Lima -> Osaka -> Quito -> Perth -> Tunis"
        " -> Riga -> Hanoi",
        "usage[sub-model]: 10 calls",
    ],
    "recursion.py": [
        "response:    north: 505 units, best: coffee; south: 820 units, best: tea; "
        "west: 475 units, best: cocoa",
        "[depth 1] Summarise the west sales report",
    ],
    "limits.py": [
        "stop_reason:   budget",
        "stop_reason:   max_iterations",
        "answer_source: extract",
        "stop_reason:   timeout",
    ],
    "structured_output.py": [
        "output:      TicketCounts(bug=9, billing=6, other=5)",
        "sub-calls:   5 (1 repair)",
        'as JSON:     {"bug": 9, "billing": 6, "other": 5}',
    ],
    "sessions.py": ["call 3: document B (270 vs 400 words; 2 earlier answers in history)"],
    "tools_and_tracing.py": [
        "response:    519.63 EUR (check: yes)",
        "loaded tree: 2 iterations, 0 child runs",
    ],
}

#: Examples that need a network or a key; they are not run here.
NOT_RUN = {"openai_backend.py"}


def run_example(name: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    return subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True,
                          text=True, timeout=timeout_s, env=env, check=False)


def test_every_example_is_covered():
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    assert scripts == set(EXPECTED) | NOT_RUN


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str):
    proc = run_example(name)
    assert proc.returncode == 0, proc.stderr
    for line in EXPECTED[name]:
        assert line in proc.stdout, f"{line!r} not in the output of {name}:\n{proc.stdout}"


def test_openai_example_explains_a_missing_key():
    proc = run_example("openai_backend.py")
    assert proc.returncode == 2
    assert "OPENAI_API_KEY is not set" in proc.stderr
