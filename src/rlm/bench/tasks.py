"""The benchmark tasks: ``Instance`` and deterministic generators, by name, for any length.

Every task turns ``(length, seed)`` into the same ``Instance`` on every run: ``length`` is
the target size of the context in tokens (estimated as characters / 4), from 2^13 to 2^20
and beyond.  The tasks, after the paper (arXiv 2512.24601, Table 1 and Figure 1):

- ``niah``: S-NIAH, one key/value needle in unrelated prose; ``exact`` scoring.
- ``oolong``: OOLONG-style aggregation over labelled records (``rlm.bench.oolong``).
- ``oolong-pairs``: OOLONG-Pairs-style pairs of users; ``pairs_f1`` scoring.
- ``multihop``: BrowseComp-Plus-style multi-hop QA over generated documents
  (``rlm.bench.multihop``).
- ``codeqa``: questions over this machine's Python standard library (``rlm.bench.codeqa``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from rlm import ConfigError
from rlm.bench import codeqa, multihop, oolong
from rlm.bench.scoring import score
from rlm.bench.text import NameMaker, prose

__all__ = ["TASKS", "Instance", "Task", "instance_id", "make_instance", "make_instances",
           "niah", "niah_one_line"]

CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class Instance:
    """One question over one long context, with its gold answer.

    ``length`` is the target context size in tokens; ``scorer`` names a function of
    ``rlm.bench.scoring.SCORERS``; ``score(prediction)`` applies it.
    """

    id: str
    task: str
    length: int
    question: str
    context: str
    answer: str
    scorer: str
    seed: int = 0

    @property
    def context_tokens(self) -> int:
        """The context's size in tokens, estimated as characters / 4."""
        return len(self.context) // CHARS_PER_TOKEN

    def score(self, prediction: str | None) -> float:
        return score(self.scorer, prediction, self.answer)


#: What a generator returns: ``(question, context, answer, scorer)``.
Generated = tuple[str, str, str, str]
Generator = Callable[[random.Random, int], Generated]


@dataclass(frozen=True)
class Task:
    """A named generator: ``generate(rng, n_chars)`` returns ``Generated``."""

    name: str
    title: str
    generate: Generator


def niah(rng: random.Random, n_chars: int) -> Generated:
    """S-NIAH: one "special magic number" sentence hidden in unrelated prose.

    The needle (``The special magic number for Drailon is: 4821937.``) sits between two
    paragraphs at a uniform position between 5% and 95% of the text; the key is a made-up
    word found nowhere else.  Scoring: ``exact`` (normalised).  Ideal answer: ``4821937``.
    """
    names = NameMaker(rng)
    key = names.word(3)
    value = str(rng.randint(1_000_000, 9_999_999))
    needle = f"The special magic number for {key} is: {value}."
    paragraphs = prose(rng, max(0, n_chars - len(needle) - 2)).split("\n\n")
    at = int(len(paragraphs) * (0.05 + 0.9 * rng.random()))
    paragraphs.insert(at, needle)
    question = (f"What is the special magic number for {key} mentioned in the text? "
                "Answer with the number only.")
    return question, "\n\n".join(paragraphs), value, "exact"


def niah_one_line(rng: random.Random, n_chars: int) -> Generated:
    """S-NIAH on a document without line breaks: the same haystack and needle as ``niah``,
    with every paragraph break replaced by a space (one line of ``n_chars`` characters)."""
    question, context, answer, scorer = niah(rng, n_chars)
    return question, " ".join(context.split("\n\n")), answer, scorer


TASKS: dict[str, Task] = {
    task.name: task for task in (
        Task("niah", "S-NIAH", niah),
        Task("niah-one-line", "S-NIAH, no line breaks", niah_one_line),
        Task("oolong", "OOLONG-style aggregation", oolong.aggregation),
        Task("oolong-pairs", "OOLONG-Pairs-style pairs", oolong.pairs),
        Task("multihop", "Multi-hop document QA", multihop.generate),
        Task("codeqa", "CodeQA over the standard library", codeqa.generate),
    )
}


def instance_id(task: str, length: int, seed: int) -> str:
    """The id of instance ``seed`` of ``task`` at ``length`` tokens: ``niah-8192-s0``."""
    return f"{task}-{length}-s{seed}"


def make_instance(task: str, length: int, seed: int = 0) -> Instance:
    """The instance ``seed`` of ``task`` at ``length`` tokens (same arguments, same instance)."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    if length < 1:
        raise ConfigError(f"length must be a positive number of tokens, got {length}")
    rng = random.Random(f"{task}:{length}:{seed}")
    question, context, answer, scorer = TASKS[task].generate(rng, length * CHARS_PER_TOKEN)
    return Instance(id=instance_id(task, length, seed), task=task, length=length,
                    question=question, context=context, answer=answer, scorer=scorer,
                    seed=seed)


def make_instances(task: str, length: int, count: int, seed: int = 0) -> list[Instance]:
    """``count`` instances of ``task`` at ``length``: seeds ``seed`` .. ``seed + count - 1``."""
    return [make_instance(task, length, seed + i) for i in range(count)]
