"""Bundled corpora, generated deterministically by the package (no downloads).

=========  ==========================================================  ===============
name       what                                                        answer
=========  ==========================================================  ===============
math       arithmetic and algebra word problems, step-by-step          the number
mcq        four-way multiple choice: geography, chemistry, language,   the letter
           arithmetic, sequences, units, physics
code       small Python functions with a reference solution and tests  (tests)
prose      docstrings of Python's standard library (English)           none
=========  ==========================================================  ===============

Every record is a dict with ``text`` (what pretraining reads), ``domain`` (the corpus name),
``difficulty`` (1-5) and ``answer`` (``None`` where there is none), plus the corpus's own
fields (``question``, ``choices``, ``solution``, ``tests``, ...), so blends, SFT/RL data and
CrossThink-style filters can select on them. The same name, size and seed give the same
records on every machine (prose: for the same Python version).

    build_bundled("math", 2000, seed=1234)   # -> <cache>/corpora/math-2000-1234-<v>.jsonl, built once
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator

from nemo_reason.registry import Registry

CORPORA: Registry = Registry("bundled corpus")
# Bump when a generator changes its output, so cached files are rebuilt.
VERSION = 1
DEFAULT_SIZE = {"math": 5000, "mcq": 5000, "code": 2000, "prose": 2000}
DEFAULT_SEED = 1234


def _templated(name: str, record: Callable[[random.Random], Dict]) -> Callable[[int, int], Iterator[Dict]]:
    def gen(num: int, seed: int) -> Iterator[Dict]:
        rng = random.Random(f"{name}:{seed}")
        for _ in range(num):
            yield record(rng)

    return gen


def _register_builtin() -> None:
    from nemo_reason.data.corpora import code, math, mcq, prose

    CORPORA.register("math", "arithmetic and algebra word problems with step-by-step solutions")(
        _templated("math", math.record))
    CORPORA.register("mcq", "multiple-choice questions across several subjects")(_templated("mcq", mcq.record))
    CORPORA.register("code", "Python function tasks with reference solutions and unit tests")(
        _templated("code", code.record))
    CORPORA.register("prose", "English prose: docstrings of the Python standard library")(prose.records)


_register_builtin()


def generate(name: str, num: int, seed: int = DEFAULT_SEED) -> Iterator[Dict]:
    """``num`` records of corpus ``name`` (prose may yield fewer: the standard library runs out)."""
    return CORPORA.get(name)(num, seed)


def write_jsonl(path: str | Path, records: Iterable[Dict]) -> int:
    """Write records one JSON object a line, atomically; returns the number written."""
    from nemo_reason.data.indexed import atomic_write

    n = 0
    with atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def bundled_path(name: str, num: int, seed: int, cache_dir: str = "") -> Path:
    from nemo_reason.data.indexed import cache_root

    return cache_root(cache_dir) / "corpora" / f"{name}-{num}-{seed}-v{VERSION}.jsonl"


def build_bundled(name: str, num: int | None = None, seed: int = DEFAULT_SEED, cache_dir: str = "") -> Path:
    """The JSONL file of corpus ``name`` (``num`` records, default per corpus), generated once into the cache."""
    CORPORA.get(name)
    num = DEFAULT_SIZE.get(name, 1000) if num is None else num
    path = bundled_path(name, num, seed, cache_dir)
    if not path.is_file():
        write_jsonl(path, generate(name, num, seed))
    return path
