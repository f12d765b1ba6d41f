"""OOLONG-style records whose labels must be inferred, and the aggregation and pairs tasks.

A record is one line: ``Date: Mar 05, 2023 || User: 48213 || Instance: Where is Velmora
located?``.  The instance is a short question in one of six categories (after OOLONG's
``trec_coarse`` split); the category is never written, only implied by the wording (a fixed
set of templates per label, filled from fixed word lists).
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import string
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

from rlm.bench.scoring import format_pairs
from rlm.bench.text import NameMaker

__all__ = ["LABELS", "TEMPLATES", "Record", "aggregation", "pairs", "records_text"]

LABELS = ("abbreviation", "entity", "description", "human", "location", "numeric")

TEMPLATES: dict[str, tuple[str, ...]] = {
    "abbreviation": ("What does {abbr} stand for?", "What is the full form of {abbr}?",
                     "What do the letters {abbr} mean in a {field} report?",
                     "{abbr} is short for what?"),
    "entity": ("What kind of {material} is used to make a {thing}?",
               "Which {animal} is shown on the flag of {place}?",
               "What instrument did the band from {place} play?",
               "Name a plant that grows near {place}."),
    "description": ("Why does a {thing} {behave}?", "How does a {thing} work?",
                    "What is the definition of {word}?",
                    "Explain the purpose of the {thing} in {place}."),
    "human": ("Who invented the {thing}?", "Who was the first {role} of {place}?",
              "Which {role} wrote the book {title}?", "Who founded the city of {place}?"),
    "location": ("Where is {place} located?", "In which country is the town of {place}?",
                 "What river flows through {place}?",
                 "Where can one find the {adj} {thing} of {place}?"),
    "numeric": ("How many {animal}s live in {place}?",
                "In what year was the {thing} of {place} built?",
                "How far is {place} from {other}?", "How much does a {thing} cost in {place}?"),
}

_WORDS: dict[str, tuple[str, ...]] = {
    "thing": ("lantern", "windmill", "compass", "kettle", "telescope", "bicycle", "clock",
              "loom", "canoe", "barometer", "typewriter", "harp"),
    "material": ("wood", "metal", "clay", "glass", "stone", "fabric"),
    "animal": ("heron", "fox", "otter", "badger", "falcon", "lynx", "beaver", "stag"),
    "role": ("mayor", "judge", "governor", "poet", "bishop", "admiral"),
    "field": ("medical", "banking", "shipping", "weather", "railway", "legal"),
    "behave": ("rust", "hum", "float", "tick", "glow", "spin"),
    "adj": ("old", "famous", "great", "hidden", "painted", "royal"),
}

DEFINITIONS = (
    "abbreviation (asks what an abbreviation stands for), entity (asks for a thing, animal, "
    "material, instrument or plant), description (asks for a definition, a reason or an "
    "explanation), human (asks for a person), location (asks for a place), numeric (asks "
    "for a number, a year, a distance or a price)"
)
PREAMBLE = (
    "The context lists records, one per line, each with a date, a user ID and an instance "
    "(a question). Every instance has exactly one of these labels: " + DEFINITIONS + ". The "
    "label is not written anywhere: infer it from the wording of the instance. "
)
_START, _DAYS = dt.date(2022, 1, 1), 1096


class Record(NamedTuple):
    """One record; ``line`` is how it appears in the context."""

    date: dt.date
    user: int
    label: str
    text: str
    line: str


_DATES = [_START + dt.timedelta(days=d) for d in range(_DAYS)]
_DATE_TEXT = [d.strftime("%b %d, %Y") for d in _DATES]
#: Each template's fields in order (a tuple, not a set: a set's order changes with the
#: process's hash seed, and so would every instance drawn from it).
_FIELDS = {t: tuple(dict.fromkeys(f for _, f, _, _ in string.Formatter().parse(t) if f))
           for group in TEMPLATES.values() for t in group}


class _Writer:
    """Fills the templates of one instance (its own places, titles and made-up words)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        names = NameMaker(rng)
        self.places = [names.word() for _ in range(60)]
        self.words = [names.word(3).lower() for _ in range(40)]

    def text(self, label: str) -> str:
        rng = self.rng
        template = rng.choice(TEMPLATES[label])
        slots: dict[str, str] = {}
        for name in _FIELDS[template]:
            if name in _WORDS:
                slots[name] = rng.choice(_WORDS[name])
            elif name in ("place", "other"):
                slots[name] = rng.choice(self.places)
            elif name == "abbr":
                slots[name] = "".join(rng.choices("ABCDEFGHKLMNPRSTW", k=rng.randint(3, 4)))
            elif name == "title":
                slots[name] = f"The {rng.choice(_WORDS['adj']).title()} {rng.choice(self.places)}"
            else:
                slots[name] = rng.choice(self.words)
        if "other" in slots and slots["other"] == slots["place"]:
            slots["other"] = self.places[(self.places.index(slots["place"]) + 1) % 60]
        return template.format(**slots)

    def record(self, user: int, label: str) -> Record:
        day = self.rng.randrange(_DAYS)
        text = self.text(label)
        line = f"Date: {_DATE_TEXT[day]} || User: {user} || Instance: {text}"
        return Record(_DATES[day], user, label, text, line)


def _users(rng: random.Random, count: int) -> list[int]:
    return rng.sample(range(10_000, 99_999), count)


def _fill(rng: random.Random, writer: _Writer, n_chars: int, users: list[int],
          labels: tuple[str, ...]) -> list[Record]:
    weights = [rng.uniform(0.5, 3.0) for _ in labels]
    records: list[Record] = []
    size = 0
    while size < n_chars:
        label = rng.choices(labels, weights)[0]
        record = writer.record(rng.choice(users), label)
        records.append(record)
        size += len(record.line) + 1
    return records


def records_text(records: list[Record]) -> str:
    return "\n".join(r.line for r in records) + "\n"


def _unique_top(counts: Counter[str], *, least: bool = False) -> str | None:
    ranked = sorted(counts.items(), key=lambda kv: kv[1], reverse=not least)
    if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]


def _questions(rng: random.Random, records: list[Record]
               ) -> list[Callable[[], tuple[str, str, str] | None]]:
    """Question makers: each returns ``(question, answer, scorer)`` or ``None`` if ambiguous."""
    counts = Counter(r.label for r in records)
    full = Counter({label: counts.get(label, 0) for label in LABELS})
    label, other = rng.sample(LABELS, 2)
    user = rng.choice(records).user
    mine = [r for r in records if r.user == user]
    cut = _START + dt.timedelta(days=rng.randrange(200, _DAYS - 200))
    number, word = "Answer with a number only.", "Answer with the label only."

    def count() -> tuple[str, str, str]:
        return (f"How many records have the label '{label}'? {number}", str(full[label]),
                "numeric")

    def most(least: bool = False) -> tuple[str, str, str] | None:
        top = _unique_top(full, least=least)
        which = "least" if least else "most"
        return None if top is None else (
            f"Which label is the {which} frequent among all records? {word}", top, "exact")

    def compare() -> tuple[str, str, str]:
        a, b = full[label], full[other]
        verdict = "more common than" if a > b else "less common than" if a < b else \
            "same frequency as"
        return (f"Is the label '{label}' more common than, less common than, or the same "
                f"frequency as the label '{other}'? Answer with exactly one of: more common "
                "than, less common than, same frequency as.", verdict, "exact")

    def by_user() -> tuple[str, str, str]:
        n = sum(1 for r in mine if r.label == label)
        return (f"How many records of user {user} have the label '{label}'? {number}",
                str(n), "numeric")

    def user_top() -> tuple[str, str, str] | None:
        top = _unique_top(Counter(r.label for r in mine))
        return None if top is None else (
            f"Which label is the most frequent among the records of user {user}? {word}",
            top, "exact")

    def after() -> tuple[str, str, str]:
        n = sum(1 for r in records if r.date > cut and r.label == label)
        return (f"How many records dated after {cut.strftime('%b %d, %Y')} have the label "
                f"'{label}'? {number}", str(n), "numeric")

    return [count, most, lambda: most(least=True), compare, by_user, user_top, after]


def aggregation(rng: random.Random, n_chars: int) -> tuple[str, str, str, str]:
    """OOLONG-style aggregation: a question that needs the inferred label of every record.

    Questions: how many records have label X; the most / least frequent label; whether X is
    more or less common than Y; how many records of user U have label X; the most frequent
    label of user U; how many records after a date have label X.  Scoring: ``numeric``
    (``0.75 ** |y - ŷ|``) for counts, ``exact`` for labels and comparisons.  Ideal answers:
    ``37``, ``location``, ``less common than``.
    """
    writer = _Writer(rng)
    users = _users(rng, max(8, min(500, n_chars // 900)))
    records = _fill(rng, writer, n_chars, users, LABELS)
    makers = _questions(rng, records)
    rng.shuffle(makers)
    for make in makers:
        made = make()
        if made is not None:
            question, answer, scorer = made
            return PREAMBLE + question, records_text(records), answer, scorer
    raise AssertionError("the count question is always well defined")


def pairs(rng: random.Random, n_chars: int) -> tuple[str, str, str, str]:
    """OOLONG-Pairs-style: every pair of users whose records satisfy a property.

    One label is rare: only a few users have records with it, some once, some two or three
    times.  The question asks for every pair of user IDs where both users have at least one
    (or at least two) records with that label.  Scoring: ``pairs_f1``.  Ideal answer:
    ``(10482, 33917), (10482, 70211), (33917, 70211)``.
    """
    writer = _Writer(rng)
    rare = rng.choice(LABELS)
    common = tuple(label for label in LABELS if label != rare)
    users = _users(rng, max(12, min(600, n_chars // 800)))
    many = rng.sample(users, rng.randint(4, 7))
    once = rng.sample([u for u in users if u not in many], rng.randint(3, 6))
    planted = [writer.record(u, rare) for u in many for _ in range(rng.randint(2, 3))]
    planted += [writer.record(u, rare) for u in once]
    budget = n_chars - sum(len(r.line) + 1 for r in planted)
    records = _fill(rng, writer, max(0, budget), users, common)
    for record in planted:
        records.insert(rng.randrange(len(records) + 1), record)
    at_least = rng.choice(("one", "two"))
    chosen = sorted(many if at_least == "two" else many + once)
    question = (
        f"{PREAMBLE}List every pair of user IDs such that both users have at least {at_least} "
        f"record{'s' if at_least == 'two' else ''} with the label '{rare}'. Write each pair "
        "once as (ID1, ID2) with the lower ID first, separated by commas."
    )
    answer = format_pairs(itertools.combinations(chosen, 2))
    return question, records_text(records), answer, "pairs_f1"
