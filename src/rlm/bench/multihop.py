"""Multi-hop QA over many generated documents, in the spirit of BrowseComp-Plus.

A world of landmarks, the companies that built them and the people who founded those
companies is written out as short documents (``Document 12`` / ``Title: ...`` / prose).
The answer needs two or three documents chained (landmark -> builder -> founder), and the
context holds hard distractors: a near-namesake founder (same first name, a surname one
letter apart) of a company with a similar name that built a landmark with the same name
but another kind, and a news item in which another company renovated the landmark.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rlm.bench.text import NameMaker, sentence

__all__ = ["generate"]

_FIRST = ("Mara", "Tobias", "Ilse", "Conrad", "Anika", "Felix", "Greta", "Jonas", "Lena",
          "Oskar", "Petra", "Rafael", "Sofia", "Viktor", "Yara", "Elias", "Nora", "Hugo")
_SUFFIXES = ("Works", "Foundry", "Engineering", "Builders", "Construction", "Holdings")
_KINDS = ("Bridge", "Tower", "Dam", "Canal", "Viaduct", "Lighthouse", "Observatory", "Arcade")
_FIELDS = ("architecture", "chemistry", "law", "mathematics", "geology", "music", "history")
_INDUSTRIES = ("civil engineering", "steel", "shipbuilding", "construction", "surveying")
_VOWELS = "aeiou"


@dataclass
class _Chain:
    landmark: str
    kind: str
    company: str
    person: str
    birth_city: str
    birth_year: int
    spouse: str
    hq: str
    landmark_city: str
    founded: int
    opened: int


class _World:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.names = NameMaker(rng)

    def person(self) -> str:
        while True:
            name = f"{self.rng.choice(_FIRST)} {self.names.word(self.rng.randint(2, 3))}"
            if self.names.claim(name):
                return name

    def chain(self, word: str | None = None, person: str | None = None) -> _Chain:
        rng = self.rng
        word = word or self.names.word()
        kind = rng.choice(_KINDS)
        founded = rng.randint(1850, 1980)
        company = f"{word} {rng.choice(_SUFFIXES)}"
        while not self.names.claim(company):
            company = f"{word} {rng.choice(_SUFFIXES)}"
        landmark = f"{word} {kind}"
        while not self.names.claim(landmark):
            kind = rng.choice(_KINDS)
            landmark = f"{word} {kind}"
        return _Chain(landmark, kind, company, person or self.person(), self.names.word(),
                      founded - rng.randint(25, 50), self.person(), self.names.word(),
                      self.names.word(), founded, founded + rng.randint(3, 30))

    def namesake(self, person: str) -> str:
        """A different person: same first name, surname one vowel apart."""
        first, surname = person.split(" ", 1)
        for _ in range(100):
            spots = [i for i, c in enumerate(surname) if c in _VOWELS]
            i = self.rng.choice(spots)
            other = surname[:i] + self.rng.choice(_VOWELS.replace(surname[i], "")) + \
                surname[i + 1:]
            if self.names.claim(f"{first} {other}"):
                return f"{first} {other}"
        return self.person()

    def filler(self, count: int) -> str:
        return " ".join(sentence(self.rng) for _ in range(count))

    def documents(self, chain: _Chain) -> list[tuple[str, str]]:
        """The landmark, company and person documents of ``chain`` as ``(title, body)``."""
        rng, c = self.rng, chain
        pronoun = rng.choice(("She", "He"))
        return [
            (f"the {c.landmark}",
             f"The {c.landmark} is a {c.kind.lower()} in {c.landmark_city}. It was built by "
             f"{c.company} and opened in {c.opened}. {self.filler(rng.randint(2, 4))}"),
            (c.company,
             f"{c.company} is a {rng.choice(_INDUSTRIES)} company founded in {c.founded} by "
             f"{c.person}. It is headquartered in {c.hq}. {self.filler(rng.randint(2, 4))}"),
            (c.person,
             f"{c.person} was born in {c.birth_city} in {c.birth_year}. {pronoun} studied "
             f"{rng.choice(_FIELDS)} and married {c.spouse}. "
             f"{self.filler(rng.randint(2, 4))}"),
        ]

    def news(self, landmark: str, company: str) -> tuple[str, str]:
        year = self.rng.randint(1990, 2020)
        return (f"News from {self.names.word()}",
                f"In {year} the {landmark} was closed for repairs. The renovation was carried "
                f"out by {company}, which replaced the old railings. {self.filler(2)}")


def _question(rng: random.Random, c: _Chain) -> tuple[str, str]:
    built = f"the company that built the {c.landmark}"
    options = [
        (f"In which city was the founder of {built} born?", c.birth_city),
        (f"Who is the spouse of the founder of {built}?", c.spouse),
        (f"In what year was the founder of {built} born?", str(c.birth_year)),
        (f"In which city is {built} headquartered?", c.hq),
        (f"In which city was the founder of {c.company} born?", c.birth_city),
    ]
    return rng.choice(options)


def generate(rng: random.Random, n_chars: int) -> tuple[str, str, str, str]:
    """A question whose answer needs 2-3 documents chained, among many distractors.

    Questions: the birth city, spouse or birth year of the founder of the company that
    built a landmark (3 documents), the headquarters city of that company (2 documents),
    or the birth city of a named company's founder (2 documents).  Scoring: ``exact``
    (normalised).  Ideal answer: ``Drauvel`` (a city), ``Mara Tolsk`` (a person) or
    ``1921`` (a year).
    """
    world = _World(rng)
    target = world.chain()
    word = target.landmark.rsplit(" ", 1)[0]
    decoy = world.chain(word=word, person=world.namesake(target.person))
    other = world.chain()
    docs = world.documents(target) + world.documents(decoy) + world.documents(other)
    docs.append(world.news(target.landmark, other.company))
    size = sum(len(t) + len(b) + 22 for t, b in docs)
    while size < n_chars:
        extra = world.documents(world.chain())
        docs.extend(extra)
        size += sum(len(t) + len(b) + 22 for t, b in extra)
    rng.shuffle(docs)
    context = "\n\n".join(f"Document {i}\nTitle: {title[0].upper()}{title[1:]}\n{body}"
                          for i, (title, body) in enumerate(docs, 1))
    question, answer = _question(rng, target)
    preamble = ("The context is a collection of documents. Answer the question by combining "
                "facts from several documents; beware of similar names. ")
    return preamble + question + " Answer with the name or number only.", context + "\n", \
        answer, "exact"
