"""The default training text, generated: nothing is downloaded, and it is the same bytes everywhere.

A small invented world (rivers, seas, cities, countries, people) is drawn once from the seed,
and each document describes part of it: encyclopedia entries, short stories, numbered lists,
dialogues and sums. The facts are consistent across documents ("The river Dalen flows into
the Sea of Morav." always names the same sea), the sentences follow templates and the
arithmetic is right, so a small model can learn far more than byte frequencies.
Document i depends only on (seed, i): any prefix of the corpus is reproducible alone.

The default (seed 0, DEFAULT_DOCS documents) is DEFAULT_BYTES bytes of UTF-8 text whose
sha256 is DEFAULT_SHA256 (tests/data/test_prepare.py holds it to these numbers).
"""

from __future__ import annotations

import random
from typing import Iterator

DEFAULT_DOCS = 6000
DEFAULT_BYTES = 5_144_667  # 5.1 MB: 5,150,667 byte-tokenizer ids with one end-of-document id each
DEFAULT_SHA256 = "43cd2003e48400adc5a74282fb80d94bb7e93fd8a8f3fabcdabb2f9a6e80144f"

_ONSETS = "b d f g h k l m n p r s t v z br dr gr kr st th sh".split()
_VOWELS = "a e i o u a e o ai ei".split()
_CODAS = ["", "", "n", "r", "l", "s", "th", "m", "nd", "k"]
_JOBS = "baker teacher farmer fisher doctor painter carpenter miller weaver sailor potter singer".split()
_FOODS = "bread apples cheese fish rice honey plums onions beans eggs milk soup".split()
_ANIMALS = "dog cat goat horse duck rabbit parrot sheep".split()
_THINGS = "bridges markets gardens bells towers boats clocks libraries".split()
_COLOURS = "green grey brown blue clear dark".split()
_SEASONS = "spring summer autumn winter".split()
_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_NUMBERS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
            "fifteen sixteen seventeen eighteen nineteen twenty").split()


def _name(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                   for _ in range(syllables)).capitalize()


class _World:
    """Every fact the documents state, drawn once from the seed."""

    def __init__(self, seed: int):
        rng = random.Random(seed)
        names = set()

        def fresh(count, syllables):
            out = []
            while len(out) < count:
                name = _name(rng, syllables)
                if name not in names:
                    names.add(name)
                    out.append(name)
            return out

        self.countries = fresh(12, 2)
        self.seas = fresh(10, 2)
        self.cities = fresh(60, 2)
        self.rivers = fresh(40, 2)
        self.country_of = {c: self.countries[i % len(self.countries)] for i, c in enumerate(self.cities)}
        self.capital = {k: next(c for c in self.cities if self.country_of[c] == k) for k in self.countries}
        self.people_of = {c: rng.randint(2, 900) * 100 for c in self.cities}
        self.known_for = {c: rng.choice(_THINGS) for c in self.cities}
        self.sea_of = {r: rng.choice(self.seas) for r in self.rivers}
        self.length = {r: rng.randint(40, 900) for r in self.rivers}
        self.through = {r: rng.sample(self.cities, 3) for r in self.rivers}
        self.people = []
        for first in fresh(80, 2):
            self.people.append({"name": first, "job": rng.choice(_JOBS), "city": rng.choice(self.cities),
                                "age": rng.randint(18, 80), "pet": rng.choice(_ANIMALS),
                                "pet_name": _name(rng, 1), "food": rng.choice(_FOODS),
                                "she": rng.random() < 0.5})


def _river(w: _World, rng: random.Random) -> str:
    r = rng.choice(w.rivers)
    a, b, c = w.through[r]
    lines = [f"The river {r} flows into the Sea of {w.sea_of[r]}.",
             f"It is {w.length[r]} kilometres long and passes through {a}, {b} and {c}.",
             f"In {rng.choice(_SEASONS)} the water of the {r} is {rng.choice(_COLOURS)}."]
    for city in (a, b, c):
        lines.append(f"{city} lies on the river {r}, in {w.country_of[city]}.")
    return "\n".join([f"# The river {r}", " ".join(lines[:3]), " ".join(lines[3:])])


def _city(w: _World, rng: random.Random) -> str:
    c = rng.choice(w.cities)
    k = w.country_of[c]
    text = [f"# {c}", f"{c} is a city in {k}. About {w.people_of[c]:,} people live in {c}. "
            f"{c} is known for its {w.known_for[c]}. The capital of {k} is {w.capital[k]}."]
    rivers = [r for r in w.rivers if c in w.through[r]]
    if rivers:
        text.append(" ".join(f"The river {r} passes through {c} on its way to the Sea of {w.sea_of[r]}."
                             for r in rivers))
    return "\n".join(text)


def _story(w: _World, rng: random.Random) -> str:
    p = rng.choice(w.people)
    n, he, his = p["name"], ("she" if p["she"] else "he"), ("her" if p["she"] else "his")
    day = rng.choice(_DAYS)
    count = rng.randint(2, 9)
    sentences = [f"{n} is a {p['job']} who lives in {p['city']}.", f"{n} is {p['age']} years old.",
                 f"{n} has a {p['pet']} called {p['pet_name']}.",
                 f"On {day} {he} went to the market and bought {_NUMBERS[count]} bags of {p['food']}.",
                 f"{he.capitalize()} gave one bag to {his} neighbour, so {he} had {_NUMBERS[count - 1]} left.",
                 f"In the evening {n} walked with {p['pet_name']} along the river and went home."]
    return " ".join(sentences)


def _list(w: _World, rng: random.Random) -> str:
    if rng.random() < 0.5:
        k = rng.choice(w.countries)
        cities = sorted((c for c in w.cities if w.country_of[c] == k), key=w.people_of.get, reverse=True)
        rows = [f"{i}. {c}, about {w.people_of[c]:,} people" for i, c in enumerate(cities, 1)]
        return "\n".join([f"The cities of {k}, largest first:", *rows])
    p = rng.choice(w.people)
    items = rng.sample(_FOODS, rng.randint(3, 6))
    rows = [f"{i}. {_NUMBERS[rng.randint(1, 12)]} {food}" for i, food in enumerate(items, 1)]
    return "\n".join([f"{p['name']}'s shopping list for {rng.choice(_DAYS)}:", *rows])


def _dialogue(w: _World, rng: random.Random) -> str:
    a, b = rng.sample(w.people, 2)
    r, c = rng.choice(w.rivers), rng.choice(w.cities)
    return "\n".join([
        f"{a['name']}: Good morning, {b['name']}. Where are you going?",
        f"{b['name']}: I am going to {c} to buy {b['food']}.",
        f"{a['name']}: Which sea does the river {r} flow into?",
        f"{b['name']}: The {r} flows into the Sea of {w.sea_of[r]}.",
        f"{a['name']}: And what is the capital of {w.country_of[c]}?",
        f"{b['name']}: The capital of {w.country_of[c]} is {w.capital[w.country_of[c]]}.",
    ])


def _sums(w: _World, rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(4, 8)):
        x, y = rng.randint(0, 50), rng.randint(0, 50)
        lines.append(f"{x} plus {y} is {x + y}." if rng.random() < 0.7 else f"{x} times {y % 10} is {x * (y % 10)}.")
    return "\n".join(lines)


_KINDS = (_river, _city, _story, _list, _dialogue, _sums)


def default_corpus_documents(seed: int = 0, n_docs: int = DEFAULT_DOCS) -> Iterator[str]:
    """The documents of the default corpus, one string each; document i depends on (seed, i) only."""
    world = _World(seed)
    for i in range(n_docs):
        rng = random.Random(seed * 1_000_003 + i + 1)  # int seeds hash the same on every platform
        # Several topics per document, as in a web page, so a window of 128 bytes crosses templates.
        parts = [rng.choice(_KINDS)(world, rng) for _ in range(rng.randint(2, 5))]
        yield "\n\n".join(parts) + "\n"
