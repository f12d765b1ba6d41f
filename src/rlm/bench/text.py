"""Deterministic filler prose and made-up names for the benchmark generators."""

from __future__ import annotations

import random

__all__ = ["NameMaker", "prose", "sentence"]

_SUBJECTS = [
    "The committee", "A young gardener", "The old ferry", "Our neighbour", "The orchestra",
    "A travelling painter", "The village baker", "The night watchman", "A quiet student",
    "The harbour master", "The weaver", "A retired teacher", "The caretaker", "The choir",
    "A curious child", "The shepherd", "The librarian", "A market trader", "The miller",
]
_VERBS = [
    "admired", "repaired", "described", "painted", "carried", "remembered", "followed",
    "measured", "polished", "collected", "ignored", "visited", "sketched", "praised",
    "borrowed", "discussed", "arranged", "watched", "cleaned", "studied",
]
_ADJECTIVES = [
    "quiet", "crooked", "golden", "narrow", "ancient", "muddy", "bright", "wooden", "patient",
    "windy", "faded", "gentle", "heavy", "silver", "rusty", "humble", "distant", "tidy",
]
_NOUNS = [
    "bridge", "lantern", "orchard", "window", "staircase", "meadow", "kettle", "garden",
    "chapel", "fence", "wagon", "river", "hillside", "courtyard", "tapestry", "workshop",
    "barn", "footpath", "harbour", "clock tower",
]
_TAILS = [
    "before the first frost arrived", "while the rain kept falling", "long after sunset",
    "on a slow afternoon in late summer", "as the market was closing",
    "without saying a single word", "during the spring festival", "with unusual care",
    "near the edge of the forest", "when the bells rang at noon", "for the third time that year",
    "just as everyone had expected", "in spite of the cold wind", "beside the empty road",
]


def sentence(rng: random.Random) -> str:
    """One sentence of harmless filler prose."""
    return (f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} the {rng.choice(_ADJECTIVES)} "
            f"{rng.choice(_NOUNS)} {rng.choice(_TAILS)}.")


def prose(rng: random.Random, n_chars: int, *, paragraph: int = 6) -> str:
    """At least ``n_chars`` characters of filler prose in paragraphs of ``paragraph`` sentences."""
    parts: list[str] = []
    size = 0
    while size < n_chars:
        text = " ".join(sentence(rng) for _ in range(paragraph))
        parts.append(text)
        size += len(text) + 2
    return "\n\n".join(parts)


_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr",
           "gr", "kr", "st", "th", "tr", "sh", "ch", "h"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou", "ae"]
_CODAS = ["", "n", "r", "l", "s", "th", "nd", "rk", "m", "x"]


class NameMaker:
    """Made-up pronounceable names, never the same twice within one maker."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: int = 2) -> str:
        while True:
            parts = [self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS)
                     for _ in range(syllables)]
            name = ("".join(parts) + self.rng.choice(_CODAS)).capitalize()
            if name not in self.used:
                self.used.add(name)
                return name

    def claim(self, name: str) -> bool:
        """Reserve ``name``; False when it is already taken."""
        if name in self.used:
            return False
        self.used.add(name)
        return True
