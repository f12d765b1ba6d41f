"""Deterministic long documents with known answers, for the demo, tests and benchmarks."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Document", "count_question", "service_log"]

_SERVICES = ["auth", "billing", "search", "catalog", "gateway", "mailer", "reports", "storage"]
_EVENTS = [
    "request served in {ms} ms",
    "cache hit ratio {pct}%",
    "connection pool at {n}/64",
    "job {job} finished",
    "retrying upstream call ({n} of 3)",
    "user session {job} refreshed",
    "slow query took {ms} ms",
    "health check passed",
]
_LEVELS = ["INFO"] * 6 + ["WARN"] * 2 + ["DEBUG"]


@dataclass(frozen=True)
class Document:
    """A generated document, a question about it and the exact answer."""

    text: str
    question: str
    answer: str


def service_log(n_chars: int = 160_000, *, seed: int = 7) -> Document:
    """A service log of about ``n_chars`` characters with one hidden maintenance code.

    The code sits in one line, past the first three quarters of the text, so a model that
    reads only the start of the document (or a window-sized prefix) cannot see it.
    """
    rng = random.Random(seed)
    lines: list[str] = []
    size = 0
    minute = 0
    while size < n_chars:
        minute += rng.randint(0, 2)
        stamp = f"2026-03-{1 + minute // 1440:02d} {minute // 60 % 24:02d}:{minute % 60:02d}"
        service = rng.choice(_SERVICES)
        event = rng.choice(_EVENTS).format(ms=rng.randint(3, 900), pct=rng.randint(40, 99),
                                           n=rng.randint(1, 64), job=rng.randint(1000, 9999))
        line = f"{stamp} {rng.choice(_LEVELS):5} [{service}] {event}"
        lines.append(line)
        size += len(line) + 1
    first = rng.randint(10, 99)
    word = rng.choice(["ALPHA", "BRAVO", "DELTA", "ECHO"])
    code = f"{first}-{word}-{rng.randint(100, 999)}"
    at = int(len(lines) * (0.78 + 0.15 * rng.random()))
    lines[at] = (f"{lines[at][:16]} WARN  [storage] maintenance window opened, "
                 f"override code {code}")
    return Document(
        text="\n".join(lines) + "\n",
        question="What is the override code given when the maintenance window opened?",
        answer=code,
    )


def count_question(document: Document, *, service: str = "billing", level: str = "WARN"
                   ) -> Document:
    """The same log with a counting question: lines of ``service`` at ``level``."""
    needle = f" {level:5} [{service}] "
    count = sum(1 for line in document.text.splitlines() if needle in line)
    return Document(
        text=document.text,
        question=f"How many log lines are at level {level} from the [{service}] service?",
        answer=str(count),
    )
