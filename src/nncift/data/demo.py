"""The built-in demo data set: instruction records across several task families, written by the
project itself and generated deterministically from a seed (no files, no network).
"""

from __future__ import annotations

import random
from typing import Callable

from nncift.data.records import Record

_CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Kenya": "Nairobi", "Canada": "Ottawa", "Peru": "Lima",
    "Norway": "Oslo", "Egypt": "Cairo", "India": "New Delhi", "Chile": "Santiago", "Italy": "Rome",
    "Spain": "Madrid", "Ghana": "Accra", "Poland": "Warsaw", "Vietnam": "Hanoi", "Cuba": "Havana",
    "Greece": "Athens", "Austria": "Vienna", "Mexico": "Mexico City", "Sweden": "Stockholm",
    "Portugal": "Lisbon", "Turkey": "Ankara", "Ireland": "Dublin", "Thailand": "Bangkok",
}
_ANTONYMS = {
    "hot": "cold", "early": "late", "happy": "sad", "tall": "short", "full": "empty", "fast": "slow",
    "light": "dark", "strong": "weak", "open": "closed", "rich": "poor", "ancient": "modern",
    "generous": "stingy", "brave": "cowardly", "rough": "smooth", "loud": "quiet", "wide": "narrow",
}
_GOOD = ["wonderful", "delightful", "excellent", "charming", "superb", "memorable", "friendly"]
_BAD = ["awful", "boring", "disappointing", "rude", "terrible", "bland", "overpriced"]
_THINGS = ["film", "restaurant", "hotel", "novel", "concert", "museum", "phone", "bakery"]
_NAMES = ["Ada", "Ravi", "Mei", "Tomas", "Zara", "Kofi", "Lena", "Omar", "Ines", "Yuki"]
_ITEMS = ["apples", "pencils", "stamps", "marbles", "books", "shells", "coins", "cards"]
_WORDS = ["garden", "planet", "violin", "harbor", "lantern", "meadow", "puzzle", "rocket", "canyon", "ember"]


def _arithmetic(rng: random.Random) -> Record:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = rng.randint(3, 60), rng.randint(2, 40)
    if rng.random() < 0.5:
        question = f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?"
        answer = f"{name} has {a} + {b} = {a + b} {item}. The answer is {a + b}."
    else:
        k = rng.randint(2, 9)
        question = f"{name} packs {k} boxes with {b} {item} in each. How many {item} are packed?"
        answer = f"{k} boxes × {b} {item} = {k * b} {item}. The answer is {k * b}."
    return Record("Solve the word problem and give the final number.", question, answer, task="arithmetic")


def _sentiment(rng: random.Random) -> Record:
    positive = rng.random() < 0.5
    words = rng.sample(_GOOD if positive else _BAD, 2)
    thing = rng.choice(_THINGS)
    review = f"The {thing} was {words[0]} and the whole experience felt {words[1]}."
    return Record("Classify the sentiment of the review as positive or negative.", review,
                  "positive" if positive else "negative", task="sentiment")


def _capital(rng: random.Random) -> Record:
    country = rng.choice(sorted(_CAPITALS))
    phrasing = rng.choice(["What is the capital of {c}?", "Name the capital city of {c}.", "Which city is the capital of {c}?"])
    return Record(phrasing.format(c=country), "", f"The capital of {country} is {_CAPITALS[country]}.", task="capitals")


def _antonym(rng: random.Random) -> Record:
    word = rng.choice(sorted(_ANTONYMS))
    return Record("Give the antonym of the word.", word, _ANTONYMS[word], task="antonyms")


def _reverse(rng: random.Random) -> Record:
    word = rng.choice(_WORDS)
    return Record("Write the word backwards, letter by letter.", word, word[::-1], task="reverse")


def _sorting(rng: random.Random) -> Record:
    numbers = rng.sample(range(1, 100), rng.randint(4, 7))
    return Record("Sort the numbers in ascending order.", ", ".join(map(str, numbers)),
                  ", ".join(map(str, sorted(numbers))), task="sorting")


def _conversion(rng: random.Random) -> Record:
    if rng.random() < 0.5:
        km = rng.randint(1, 50)
        return Record("Convert the distance to metres.", f"{km} km", f"{km} km is {km * 1000} metres.", task="units")
    hours = rng.randint(1, 12)
    return Record("Convert the time to minutes.", f"{hours} hours", f"{hours} hours is {hours * 60} minutes.", task="units")


def _email(rng: random.Random) -> Record:
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    day = rng.choice(["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"])
    return Record(
        "Write a short, polite email.",
        f"Ask {name} to move our meeting about the {thing} to {day}.",
        f"Dear {name},\n\nWould it be possible to move our meeting about the {thing} to {day}? "
        "Please let me know if that works for you.\n\nThank you,\nSam",
        task="email",
    )


_FAMILIES: tuple[Callable[[random.Random], Record], ...] = (
    _arithmetic, _sentiment, _capital, _antonym, _reverse, _sorting, _conversion, _email,
)


def demo_records(n: int = 320, seed: int = 0) -> list[Record]:
    """``n`` records cycling through 8 task families, deterministic for a seed.

    Each record carries its family as ``task`` and a ``source`` of ``demo:<position>``.
    """
    rng = random.Random(seed)
    records = []
    for position in range(n):
        record = _FAMILIES[position % len(_FAMILIES)](rng)
        raw = {"instruction": record.instruction, "input": record.input, "output": record.output, "task": record.task}
        records.append(Record(record.instruction, record.input, record.output, f"demo:{position + 1}", record.task, raw))
    return records
