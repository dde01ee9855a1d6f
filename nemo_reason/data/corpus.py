"""A small synthetic corpus, generated deterministically from a seed (no downloads).

The corpus of ``data.source=synthetic`` (the tiny recipes' golden losses are measured on it, so
it stays as it is): step-by-step arithmetic word problems and templated English sentences. The
richer bundled corpora (math, mcq, code, prose) are in :mod:`nemo_reason.data.corpora`. Each document is a dict with ``text``, ``domain`` and,
for arithmetic, the verifiable ``answer``.
"""

from __future__ import annotations

import random
from typing import Dict, Iterator

_NAMES = ["Ada", "Alan", "Grace", "Linus", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Frances"]
_ITEMS = ["apples", "books", "coins", "marbles", "pencils", "stamps", "cards", "shells"]
_SUBJECTS = ["The river", "A small bird", "The old library", "Every morning the baker", "The train",
             "Our teacher", "The quiet cat", "A tall tree", "The city council", "The scientist"]
_VERBS = ["watched", "carried", "found", "painted", "remembered", "measured", "opened", "described"]
_OBJECTS = ["the green hills", "a letter from home", "seven bright lanterns", "the long road north",
            "an empty notebook", "the winter market", "a map of the stars", "the broken clock"]
_ENDINGS = ["before sunset.", "with great care.", "after the rain stopped.", "without a word.",
            "for the first time.", "near the harbor.", "at the end of the day."]


def _arithmetic(rng: random.Random) -> Dict:
    name = rng.choice(_NAMES)
    item = rng.choice(_ITEMS)
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    if rng.random() < 0.5:
        ans = a + b
        text = (f"Question: {name} has {a} {item} and gets {b} more. How many {item} does {name} have?\n"
                f"Solution: {name} starts with {a} {item}. {a} + {b} = {ans}.\nAnswer: {ans}")
    else:
        a, b = max(a, b), min(a, b)
        ans = a - b
        text = (f"Question: {name} has {a} {item} and gives away {b}. How many {item} are left?\n"
                f"Solution: {name} starts with {a} {item}. {a} - {b} = {ans}.\nAnswer: {ans}")
    return {"text": text, "domain": "math", "answer": str(ans)}


def _prose(rng: random.Random) -> Dict:
    sentences = [f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_ENDINGS)}"
                 for _ in range(rng.randint(2, 5))]
    return {"text": " ".join(sentences), "domain": "prose", "answer": None}


def generate(num_documents: int, seed: int) -> Iterator[Dict]:
    rng = random.Random(seed)
    for _ in range(num_documents):
        yield _arithmetic(rng) if rng.random() < 0.5 else _prose(rng)
