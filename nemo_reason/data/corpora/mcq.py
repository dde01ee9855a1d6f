"""Multiple-choice questions across several subjects, built from templates and small fact tables.

Subjects: geography (capitals), chemistry (element symbols), language (antonyms), arithmetic,
number sequences, unit conversion and physics (speed, force). Each question has four choices, one
correct; the distractors come from the same table or from near misses of the right number, so
they are plausible. The answer is the letter (``"A"``-``"D"``), the form CrossThink's MCQ
template and the ``rewards/mcq`` verifier use; ``subject`` names the template.

Left out: questions needing knowledge the tables here don't hold; the facts are few but correct.
"""

from __future__ import annotations

import random
from typing import Callable, Dict, List, Tuple

LETTERS = "ABCD"

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "Canada": "Ottawa", "Australia": "Canberra", "Brazil": "Brasilia", "Egypt": "Cairo",
    "Kenya": "Nairobi", "India": "New Delhi", "China": "Beijing", "Norway": "Oslo", "Sweden": "Stockholm",
    "Finland": "Helsinki", "Poland": "Warsaw", "Greece": "Athens", "Turkey": "Ankara", "Peru": "Lima",
    "Chile": "Santiago", "Argentina": "Buenos Aires", "Mexico": "Mexico City", "Ireland": "Dublin",
    "Austria": "Vienna", "Hungary": "Budapest", "Thailand": "Bangkok", "Vietnam": "Hanoi",
    "Morocco": "Rabat", "Ghana": "Accra", "New Zealand": "Wellington", "Switzerland": "Bern",
}
ELEMENTS = {
    "hydrogen": "H", "helium": "He", "lithium": "Li", "carbon": "C", "nitrogen": "N", "oxygen": "O",
    "fluorine": "F", "neon": "Ne", "sodium": "Na", "magnesium": "Mg", "aluminium": "Al", "silicon": "Si",
    "phosphorus": "P", "sulfur": "S", "chlorine": "Cl", "argon": "Ar", "potassium": "K", "calcium": "Ca",
    "iron": "Fe", "copper": "Cu", "zinc": "Zn", "silver": "Ag", "tin": "Sn", "gold": "Au", "mercury": "Hg",
    "lead": "Pb", "uranium": "U", "nickel": "Ni", "cobalt": "Co", "iodine": "I",
}
ANTONYMS = {
    "ancient": "modern", "brave": "cowardly", "generous": "selfish", "rigid": "flexible",
    "scarce": "plentiful", "transparent": "opaque", "expand": "contract", "accept": "refuse",
    "humble": "arrogant", "temporary": "permanent", "victory": "defeat", "shallow": "deep",
    "ascend": "descend", "artificial": "natural", "frequent": "rare", "include": "exclude",
    "maximum": "minimum", "optimistic": "pessimistic", "visible": "hidden", "vertical": "horizontal",
}
UNITS = [("kilometres", "metres", 1000), ("metres", "centimetres", 100), ("kilograms", "grams", 1000),
         ("hours", "minutes", 60), ("minutes", "seconds", 60), ("litres", "millilitres", 1000),
         ("days", "hours", 24), ("weeks", "days", 7)]

Question = Tuple[str, str, List[str], int]  # question, correct, distractors, difficulty


def _pick_others(rng: random.Random, pool: List[str], correct: str, k: int = 3) -> List[str]:
    return rng.sample(sorted(v for v in set(pool) if v != correct), k)


def _near_numbers(rng: random.Random, value: int, k: int = 3) -> List[str]:
    out: List[int] = []
    while len(out) < k:
        cand = value + rng.choice([-1, 1]) * rng.choice([1, 2, 3, 5, 10, max(1, abs(value) // 10)])
        if cand != value and cand not in out:
            out.append(cand)
    return [str(v) for v in out]


def geography(rng: random.Random) -> Question:
    country = rng.choice(sorted(CAPITALS))
    correct = CAPITALS[country]
    return f"What is the capital of {country}?", correct, _pick_others(rng, list(CAPITALS.values()), correct), 2


def chemistry(rng: random.Random) -> Question:
    elem = rng.choice(sorted(ELEMENTS))
    if rng.random() < 0.5:
        correct = ELEMENTS[elem]
        return (f"What is the chemical symbol of {elem}?", correct,
                _pick_others(rng, list(ELEMENTS.values()), correct), 2)
    return (f"Which element has the chemical symbol {ELEMENTS[elem]}?", elem,
            _pick_others(rng, list(ELEMENTS), elem), 3)


def language(rng: random.Random) -> Question:
    word = rng.choice(sorted(ANTONYMS))
    correct = ANTONYMS[word]
    pool = [w for w in list(ANTONYMS.values()) + list(ANTONYMS) if w != word]
    return f"Which word is the opposite of \"{word}\"?", correct, _pick_others(rng, pool, correct), 2


def arithmetic(rng: random.Random) -> Question:
    a, b, c = rng.randint(2, 30), rng.randint(2, 12), rng.randint(1, 40)
    value = a * b + c
    return f"What is {a} x {b} + {c}?", str(value), _near_numbers(rng, value), 1


def sequences(rng: random.Random) -> Question:
    if rng.random() < 0.5:
        start, step = rng.randint(1, 20), rng.randint(2, 9)
        seq = [start + i * step for i in range(5)]
        nxt, diff = start + 5 * step, 3
    else:
        start, ratio = rng.randint(1, 5), rng.randint(2, 3)
        seq = [start * ratio ** i for i in range(5)]
        nxt, diff = start * ratio ** 5, 4
    return f"What number comes next: {', '.join(map(str, seq))}, ...?", str(nxt), _near_numbers(rng, nxt), diff


def units(rng: random.Random) -> Question:
    big, small, factor = rng.choice(UNITS)
    n = rng.randint(2, 15)
    value = n * factor
    wrong = sorted({str(n * factor * 10), str(n * factor // 10 or n + 1), str(n * 100 if factor != 100 else n * 1000),
                    str(value + factor), str(value - factor)} - {str(value)})
    return f"How many {small} are there in {n} {big}?", str(value), rng.sample(wrong, 3), 2


def physics(rng: random.Random) -> Question:
    if rng.random() < 0.5:
        t, v = rng.randint(2, 12), rng.randint(2, 30)
        d = v * t
        return (f"An object covers {d} metres in {t} seconds at constant speed. What is its speed in m/s?",
                str(v), _near_numbers(rng, v), 3)
    m, a = rng.randint(2, 40), rng.randint(1, 10)
    return (f"What force, in newtons, accelerates a {m} kg mass at {a} m/s^2?", str(m * a),
            _near_numbers(rng, m * a), 3)


TEMPLATES: List[Callable[[random.Random], Question]] = [geography, chemistry, language, arithmetic,
                                                       sequences, units, physics]


def record(rng: random.Random) -> Dict:
    fn = rng.choice(TEMPLATES)
    question, correct, distractors, difficulty = fn(rng)
    choices = distractors[:3] + [correct]
    rng.shuffle(choices)
    letter = LETTERS[choices.index(correct)]
    lines = [f"Question: {question}"] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    text = "\n".join(lines) + f"\nAnswer: {letter}"
    return {"text": text, "domain": "mcq", "difficulty": difficulty, "answer": letter, "subject": fn.__name__,
            "question": question, "choices": choices, "answer_text": correct}
