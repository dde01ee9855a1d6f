"""Small Python function tasks, each with a reference solution and unit tests.

A task is a template with parameters drawn from the seed (a shift, a divisor, a word, ...), a
reference solution written out as source, and a handful of inputs. The expected outputs are
computed by running the reference solution on those inputs, and the tests are ``assert`` lines
over them, so the tests pass against the reference by construction (tests/unit/test_corpora.py
runs them to check). The ``rewards/code`` sandbox runs a completion against ``tests``.

Left out: tasks needing imports, I/O or classes; the solutions are short on purpose.
"""

from __future__ import annotations

import random
from typing import Callable, Dict, List, Tuple

Task = Tuple[str, str, str, List[tuple], int]  # entry point, prompt, solution source, inputs, difficulty


def _words(rng: random.Random, n: int) -> List[str]:
    pool = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "level", "noon", "moon", "tree",
            "radar", "sun", "kayak", "apple", "civic", "data", "code", "loop", "refer"]
    return [rng.choice(pool) for _ in range(n)]


def _ints(rng: random.Random, n: int, lo: int = -20, hi: int = 40) -> List[int]:
    return [rng.randint(lo, hi) for _ in range(n)]


def add_constant(rng: random.Random) -> Task:
    k = rng.randint(2, 15)
    name = f"add_{k}"
    prompt = f"Write a function {name}(xs) that returns a new list with {k} added to every element of xs."
    src = f"def {name}(xs):\n    return [x + {k} for x in xs]\n"
    return name, prompt, src, [(_ints(rng, rng.randint(0, 6)),) for _ in range(4)], 1


def count_char(rng: random.Random) -> Task:
    ch = rng.choice("aeiourst")
    name = f"count_{ch}"
    prompt = f"Write a function {name}(s) that returns how many times the letter '{ch}' occurs in s, ignoring case."
    src = f"def {name}(s):\n    return s.lower().count({ch!r})\n"
    inputs = [(" ".join(_words(rng, rng.randint(1, 5))).title(),) for _ in range(4)]
    return name, prompt, src, inputs, 1


def sum_multiples(rng: random.Random) -> Task:
    a, b = rng.sample([2, 3, 4, 5, 7, 11], 2)
    name = f"sum_multiples_{a}_{b}"
    prompt = (f"Write a function {name}(n) that returns the sum of all non-negative integers below n "
              f"that are multiples of {a} or {b}.")
    src = (f"def {name}(n):\n    total = 0\n    for i in range(n):\n"
           f"        if i % {a} == 0 or i % {b} == 0:\n            total += i\n    return total\n")
    return name, prompt, src, [(rng.randint(0, 100),) for _ in range(4)], 2


def fizzbuzz_words(rng: random.Random) -> Task:
    a, b = rng.sample([2, 3, 5, 7], 2)
    wa, wb = rng.sample(["Fizz", "Buzz", "Bang", "Pop", "Zap"], 2)
    name = "fizz_words"
    prompt = (f"Write a function {name}(n) that returns '{wa}{wb}' if n is divisible by both {a} and {b}, "
              f"'{wa}' if only by {a}, '{wb}' if only by {b}, and str(n) otherwise.")
    src = (f"def {name}(n):\n    if n % {a} == 0 and n % {b} == 0:\n        return {wa + wb!r}\n"
           f"    if n % {a} == 0:\n        return {wa!r}\n    if n % {b} == 0:\n        return {wb!r}\n"
           f"    return str(n)\n")
    return name, prompt, src, [(n,) for n in [a * b, a, b, rng.randint(1, 50), a * b * 2 + 1]], 2


def palindromes(rng: random.Random) -> Task:
    name = "palindromes"
    prompt = f"Write a function {name}(words) that returns the words of the list that read the same backwards, in order."
    src = f"def {name}(words):\n    return [w for w in words if w == w[::-1]]\n"
    return name, prompt, src, [(_words(rng, rng.randint(0, 6)),) for _ in range(4)], 2


def clamp_all(rng: random.Random) -> Task:
    lo = rng.randint(-10, 5)
    hi = lo + rng.randint(3, 20)
    name = "clamp_all"
    prompt = f"Write a function {name}(xs) that replaces each value below {lo} by {lo} and each above {hi} by {hi}."
    src = f"def {name}(xs):\n    return [min(max(x, {lo}), {hi}) for x in xs]\n"
    return name, prompt, src, [(_ints(rng, rng.randint(1, 7), -30, 40),) for _ in range(4)], 2


def running_max(rng: random.Random) -> Task:
    name = "running_max"
    prompt = f"Write a function {name}(xs) that returns a list whose i-th element is the largest of xs[0..i]."
    src = (f"def {name}(xs):\n    out = []\n    best = None\n    for x in xs:\n"
           f"        best = x if best is None or x > best else best\n        out.append(best)\n    return out\n")
    return name, prompt, src, [(_ints(rng, rng.randint(0, 7)),) for _ in range(4)], 3


def caesar(rng: random.Random) -> Task:
    k = rng.randint(1, 25)
    name = f"shift_{k}"
    prompt = (f"Write a function {name}(s) that shifts every lowercase letter of s forward by {k} places in the "
              f"alphabet, wrapping from z to a, and leaves other characters unchanged.")
    src = (f"def {name}(s):\n    out = []\n    for c in s:\n        if 'a' <= c <= 'z':\n"
           f"            c = chr((ord(c) - ord('a') + {k}) % 26 + ord('a'))\n        out.append(c)\n"
           f"    return ''.join(out)\n")
    return name, prompt, src, [(" ".join(_words(rng, rng.randint(1, 4))) + "!",) for _ in range(4)], 3


def dedupe(rng: random.Random) -> Task:
    name = "dedupe"
    prompt = f"Write a function {name}(xs) that removes repeated values from xs, keeping the first occurrence of each."
    src = (f"def {name}(xs):\n    seen = set()\n    out = []\n    for x in xs:\n        if x not in seen:\n"
           f"            seen.add(x)\n            out.append(x)\n    return out\n")
    return name, prompt, src, [(_ints(rng, rng.randint(0, 9), 0, 6),) for _ in range(4)], 3


def fib_mod(rng: random.Random) -> Task:
    m = rng.choice([7, 10, 13, 97, 100, 1000])
    name = f"fib_mod_{m}"
    prompt = f"Write a function {name}(n) that returns the n-th Fibonacci number (fib(0)=0, fib(1)=1) modulo {m}."
    src = f"def {name}(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, (a + b) % {m}\n    return a\n"
    return name, prompt, src, [(n,) for n in [0, 1, rng.randint(2, 10), rng.randint(11, 60)]], 3


def second_largest(rng: random.Random) -> Task:
    name = "second_largest"
    prompt = (f"Write a function {name}(xs) that returns the second largest distinct value of xs, "
              f"or None if there is none.")
    src = f"def {name}(xs):\n    vals = sorted(set(xs))\n    return vals[-2] if len(vals) >= 2 else None\n"
    return name, prompt, src, [([rng.randint(0, 9)] * 3,)] + [(_ints(rng, rng.randint(2, 7)),) for _ in range(3)], 4


def digit_root(rng: random.Random) -> Task:
    base = rng.choice([2, 8, 10, 16])
    name = f"digit_sum_base{base}"
    prompt = f"Write a function {name}(n) that returns the sum of the digits of the non-negative integer n written in base {base}."
    src = (f"def {name}(n):\n    total = 0\n    while n:\n        n, d = divmod(n, {base})\n        total += d\n"
           f"    return total\n")
    return name, prompt, src, [(0,)] + [(rng.randint(1, 10 ** 5),) for _ in range(3)], 4


TEMPLATES: List[Callable[[random.Random], Task]] = [
    add_constant, count_char, sum_multiples, fizzbuzz_words, palindromes, clamp_all, running_max,
    caesar, dedupe, fib_mod, second_largest, digit_root,
]


def make_tests(entry_point: str, solution: str, inputs: List[tuple]) -> List[str]:
    """``assert`` lines whose expected values come from running ``solution`` on ``inputs``."""
    namespace: Dict = {}
    exec(compile(solution, f"<{entry_point}>", "exec"), namespace)  # our own template source
    fn = namespace[entry_point]
    tests = []
    for args in inputs:
        call = f"{entry_point}({', '.join(repr(a) for a in args)})"
        tests.append(f"assert {call} == {fn(*args)!r}")
    return tests


def record(rng: random.Random) -> Dict:
    fn = rng.choice(TEMPLATES)
    entry, prompt, solution, inputs, difficulty = fn(rng)
    tests = make_tests(entry, solution, inputs)
    text = (f"Task: {prompt}\n```python\n{solution}```\nTests:\n```python\n" + "\n".join(tests) + "\n```")
    return {"text": text, "domain": "code", "difficulty": difficulty, "answer": None, "prompt": prompt,
            "solution": solution, "tests": tests, "entry_point": entry, "template": fn.__name__}
