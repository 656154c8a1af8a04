"""The benchmarks' English sentences, 5 to 25 words, the same for a given seed. Standard library
only: the Ray Serve peer reads them in its own environment."""

from __future__ import annotations

from random import Random

_SUBJECTS = (
    "The cat",
    "A tired engineer",
    "Our new worker process",
    "The river",
    "A small bakery on the corner",
    "The central bank",
    "My neighbour's dog",
    "The planning committee",
    "A delivery drone",
    "The old lighthouse keeper",
    "Every student in the class",
    "The football team",
)
_VERBS = (
    "watched",
    "repaired",
    "ignored",
    "measured",
    "painted",
    "described",
    "followed",
    "sold",
    "crossed",
    "celebrated",
    "forgot about",
    "argued over",
)
_OBJECTS = (
    "the morning train",
    "a long queue of requests",
    "the mountain road",
    "a basket of fresh bread",
    "the rise in interest rates",
    "the last match of the season",
    "a broken umbrella",
    "the results of the election",
    "an old map of the harbour",
    "the price of coffee",
)
_TAILS = (
    "",
    "before the storm arrived",
    "while everyone else was asleep",
    "for the third time this week",
    "with surprising patience and a cup of tea",
    "because the deadline had moved again and nobody could say why",
    "in the rain",
    "after a short meeting with the rest of the team on Friday afternoon",
)


def sentences(count: int, seed: int = 0) -> list[str]:
    """``count`` English sentences, the same for a given seed."""
    rnd = Random(seed)
    out = []
    for _ in range(count):
        words = [rnd.choice(_SUBJECTS), rnd.choice(_VERBS), rnd.choice(_OBJECTS)]
        out.append(" ".join(w for w in [*words, rnd.choice(_TAILS)] if w) + ".")
    return out
