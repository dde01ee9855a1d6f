"""Arithmetic and algebra word problems with step-by-step solutions and a final numeric answer.

Every problem is built from a template and random integers chosen so that the answer is exact
(integers, or decimals with at most two places), and the solution shows each step with the
numbers it uses, GSM8K style. Difficulty runs from 1 (one addition) to 5 (a quadratic or a
system of equations). The answer is the string a verifier compares against (``rewards/math``).

Left out: geometry, fractions as answers, problems whose answer needs rounding.
"""

from __future__ import annotations

import random
from typing import Callable, Dict, List, Tuple

NAMES = ["Ada", "Alan", "Grace", "Linus", "Edsger", "Barbara", "Donald", "Margaret", "Ken",
         "Frances", "Claude", "Hedy", "John", "Radia", "Tim", "Sophie", "Niklaus", "Lovelace"]
ITEMS = ["apples", "books", "coins", "marbles", "pencils", "stamps", "cards", "shells", "stickers",
         "oranges", "bottles", "tickets"]
SHOPS = [("notebook", "notebooks"), ("pen", "pens"), ("sandwich", "sandwiches"), ("ticket", "tickets"),
         ("plant", "plants"), ("lamp", "lamps")]
VEHICLES = ["train", "cyclist", "car", "boat", "runner", "bus"]

Problem = Tuple[str, List[str], str, int]  # question, solution steps, answer, difficulty


def _fmt(x: float) -> str:
    """Integers without a decimal point, other values with at most two places."""
    if abs(x - round(x)) < 1e-9:
        return str(int(round(x)))
    return f"{x:.2f}".rstrip("0").rstrip(".")


def add_sub(rng: random.Random) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(5, 90), rng.randint(2, 60)
    if rng.random() < 0.5:
        q = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
        return q, [f"{name} starts with {a} {item}.", f"{a} + {b} = {a + b}."], str(a + b), 1
    a, b = max(a, b), min(a, b)
    q = f"{name} has {a} {item} and gives away {b}. How many {item} are left?"
    return q, [f"{name} starts with {a} {item}.", f"{a} - {b} = {a - b}."], str(a - b), 1


def mul_div(rng: random.Random) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    boxes, per = rng.randint(2, 12), rng.randint(3, 25)
    if rng.random() < 0.5:
        q = f"{name} has {boxes} boxes with {per} {item} in each box. How many {item} are there in all?"
        return q, [f"Each of the {boxes} boxes holds {per} {item}.", f"{boxes} x {per} = {boxes * per}."], \
            str(boxes * per), 2
    total = boxes * per
    q = f"{name} shares {total} {item} equally among {boxes} friends. How many {item} does each friend get?"
    return q, [f"{total} {item} are split into {boxes} equal shares.", f"{total} / {boxes} = {per}."], str(per), 2


def shopping(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    (one_a, many_a), (one_b, many_b) = rng.sample(SHOPS, 2)
    na, pa = rng.randint(2, 6), rng.randint(2, 15)
    nb, pb = rng.randint(1, 5), rng.randint(3, 20)
    cost_a, cost_b = na * pa, nb * pb
    total = cost_a + cost_b
    paid = ((total // 10) + rng.randint(1, 5)) * 10
    q = (f"{name} buys {na} {many_a} at ${pa} each and {nb} {many_b if nb > 1 else one_b} at ${pb} each, "
         f"and pays with ${paid}. How much change does {name} get, in dollars?")
    steps = [f"The {many_a} cost {na} x {pa} = {cost_a} dollars.",
             f"The {many_b if nb > 1 else one_b} cost {nb} x {pb} = {cost_b} dollars.",
             f"Together: {cost_a} + {cost_b} = {total} dollars.",
             f"Change: {paid} - {total} = {paid - total} dollars."]
    return q, steps, str(paid - total), 3


def percent(rng: random.Random) -> Problem:
    name, (one, _) = rng.choice(NAMES), rng.choice(SHOPS)
    price = rng.randint(4, 60) * 5
    pct = rng.choice([10, 15, 20, 25, 30, 40, 50])
    off = price * pct / 100
    q = f"A {one} costs ${price}. {name} gets a {pct}% discount. What does {name} pay, in dollars?"
    steps = [f"The discount is {pct}% of {price}: {price} x {pct} / 100 = {_fmt(off)} dollars.",
             f"The price after the discount: {price} - {_fmt(off)} = {_fmt(price - off)} dollars."]
    return q, steps, _fmt(price - off), 3


def rate(rng: random.Random) -> Problem:
    v = rng.choice(VEHICLES)
    speed, hours = rng.randint(4, 90), rng.randint(2, 9)
    extra = rng.randint(1, 4)
    q = (f"A {v} travels at {speed} km per hour for {hours} hours, then at {speed + 10} km per hour for "
         f"{extra} more hours. How many kilometres does it travel in total?")
    d1, d2 = speed * hours, (speed + 10) * extra
    steps = [f"First part: {speed} x {hours} = {d1} km.", f"Second part: {speed + 10} x {extra} = {d2} km.",
             f"Total: {d1} + {d2} = {d1 + d2} km."]
    return q, steps, str(d1 + d2), 2


def average(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    n = rng.randint(3, 6)
    mean = rng.randint(50, 95)
    scores = [mean + rng.randint(-12, 12) for _ in range(n - 1)]
    scores.append(mean * n - sum(scores))
    q = f"{name}'s test scores are {', '.join(map(str, scores))}. What is the average score?"
    steps = [f"Sum: {' + '.join(map(str, scores))} = {sum(scores)}.",
             f"There are {n} scores, so the average is {sum(scores)} / {n} = {mean}."]
    return q, steps, str(mean), 2


def linear(rng: random.Random) -> Problem:
    x = rng.randint(-12, 15)
    a = rng.choice([k for k in range(-9, 10) if k not in (0, 1)])
    b = rng.randint(-30, 30)
    c = a * x + b
    sign = "+" if b >= 0 else "-"
    q = f"Solve for x: {a}x {sign} {abs(b)} = {c}."
    steps = [f"Subtract {b} from both sides: {a}x = {c} - ({b}) = {c - b}.",
             f"Divide both sides by {a}: x = {c - b} / {a} = {x}."]
    return q, steps, str(x), 3


def age(rng: random.Random) -> Problem:
    p, c = rng.sample(NAMES, 2)
    child = rng.randint(3, 15)
    k = rng.randint(2, 4)
    years = rng.randint(2, 10)
    q = (f"{p} is {k} times as old as {c}. In {years} years their ages will add up to "
         f"{(k + 1) * child + 2 * years}. How old is {c} now?")
    total = (k + 1) * child + 2 * years
    steps = [f"Let {c}'s age be a; then {p} is {k}a.",
             f"In {years} years: (a + {years}) + ({k}a + {years}) = {total}.",
             f"So {k + 1}a + {2 * years} = {total}, and {k + 1}a = {total - 2 * years}.",
             f"a = {total - 2 * years} / {k + 1} = {child}."]
    return q, steps, str(child), 4


def system(rng: random.Random) -> Problem:
    x, y = rng.randint(-9, 12), rng.randint(-9, 12)
    a1, b1 = rng.randint(1, 6), rng.randint(1, 6)
    a2, b2 = rng.randint(1, 6), rng.randint(-6, -1)
    c1, c2 = a1 * x + b1 * y, a2 * x + b2 * y
    det = a1 * b2 - a2 * b1  # never 0: b2 < 0 < b1, a1, a2 > 0
    q = f"Solve the system {a1}x + {b1}y = {c1} and {a2}x - {-b2}y = {c2}. What is x + y?"
    steps = [f"Multiply the first equation by {a2} and the second by {a1}:",
             f"{a1 * a2}x + {b1 * a2}y = {c1 * a2} and {a1 * a2}x + ({b2 * a1})y = {c2 * a1}.",
             f"Subtract: {b1 * a2 - b2 * a1}y = {c1 * a2 - c2 * a1}, so y = {y}.",
             f"Then {a1}x = {c1} - {b1} x ({y}) = {c1 - b1 * y}, so x = {x}.",
             f"x + y = {x} + ({y}) = {x + y}."]
    assert det != 0
    return q, steps, str(x + y), 5


def quadratic(rng: random.Random) -> Problem:
    r1, r2 = sorted(rng.sample([k for k in range(-9, 10) if k != 0], 2))
    b, c = -(r1 + r2), r1 * r2
    bs = f"+ {b}x" if b >= 0 else f"- {-b}x"
    cs = f"+ {c}" if c >= 0 else f"- {-c}"
    q = f"Find the larger root of x^2 {bs} {cs} = 0."
    steps = [f"We need two numbers whose product is {c} and whose sum is {-b}: {r1} and {r2}.",
             f"So x^2 {bs} {cs} = (x - ({r1}))(x - ({r2})).",
             f"The roots are {r1} and {r2}; the larger is {r2}."]
    return q, steps, str(r2), 5


TEMPLATES: List[Tuple[Callable[[random.Random], Problem], float]] = [
    (add_sub, 3), (mul_div, 3), (rate, 2), (average, 2), (shopping, 2), (percent, 2),
    (linear, 2), (age, 1), (system, 1), (quadratic, 1),
]


def record(rng: random.Random) -> Dict:
    fns, weights = zip(*TEMPLATES)
    fn = rng.choices(fns, weights=weights)[0]
    question, steps, answer, difficulty = fn(rng)
    solution = " ".join(steps)
    text = f"Question: {question}\nSolution: {solution}\nAnswer: {answer}"
    return {"text": text, "domain": "math", "difficulty": difficulty, "answer": answer,
            "question": question, "solution": solution, "template": fn.__name__}
