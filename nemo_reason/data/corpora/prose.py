"""English prose from the docstrings of Python's standard library, an offline source on every machine.

The standard library's ``.py`` sources are read and parsed with :mod:`ast`, never imported, so no
module's import-time side effects run (``antigravity`` opens a browser, ``this`` prints) and a
module that cannot be imported here (``tkinter`` without Tk) still counts. Files are visited in
an order drawn from the seed over the sorted file list, and every module, class and function
docstring of at least ``MIN_WORDS`` words is one document. The same Python version therefore gives
the same documents on every machine; another version's docstrings differ a little.

Difficulty is a readability grade from words per sentence and letters per word (1 easy, 5 hard);
prose has no verifiable answer. Left out: test suites, IDLE, vendored wheels, comments.
"""

from __future__ import annotations

import ast
import inspect
import random
import re
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

MIN_WORDS = 30
_SKIP_DIRS = {"test", "tests", "idlelib", "turtledemo", "site-packages", "dist-packages", "__pycache__",
              "_bundled", "lib2to3", "pydoc_data", "ensurepip", "config-3", "encodings"}
_SENTENCE = re.compile(r"[.!?](?:\s|$)")


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@lru_cache(maxsize=1)
def source_files() -> Tuple[str, ...]:
    """Standard-library source files, relative to :func:`stdlib_dir`, sorted."""
    root = stdlib_dir()
    out = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if any(part in _SKIP_DIRS or part.startswith("config-") for part in rel.parts[:-1]):
            continue
        out.append(str(rel))
    return tuple(sorted(out))


def _docstrings(rel: str) -> Iterator[Tuple[str, str]]:
    """(qualified name, cleaned docstring) for the module and its classes and functions."""
    try:
        tree = ast.parse((stdlib_dir() / rel).read_bytes(), filename=rel)
    except (SyntaxError, ValueError, OSError):
        return
    module = rel[:-3].replace("/", ".").removesuffix(".__init__")

    def walk(node, prefix):
        doc = ast.get_docstring(node, clean=False)
        if doc:
            yield prefix, inspect.cleandoc(doc)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                yield from walk(child, f"{prefix}.{child.name}")

    yield from walk(tree, module)


def readability(text: str) -> int:
    """1 (short sentences, short words) .. 5 (long sentences, long words)."""
    words = re.findall(r"[A-Za-z]+", text)
    if not words:
        return 3
    sentences = max(1, len(_SENTENCE.findall(text)))
    wps = len(words) / sentences
    lpw = sum(map(len, words)) / len(words)
    grade = 0.39 * wps + 11.8 * (lpw / 3.0) - 15.6  # a Flesch-Kincaid-like grade, letters for syllables
    return int(min(5, max(1, 1 + grade // 4)))


def records(num: int, seed: int) -> Iterator[Dict]:
    """Up to ``num`` docstring documents (fewer if the standard library runs out)."""
    files = list(source_files())
    random.Random(seed).shuffle(files)
    count = 0
    seen = set()
    for rel in files:
        for name, doc in _docstrings(rel):
            if len(doc.split()) < MIN_WORDS or doc in seen:  # inherited docstrings repeat
                continue
            seen.add(doc)
            yield {"text": doc, "domain": "prose", "difficulty": readability(doc), "answer": None, "source": name}
            count += 1
            if count >= num:
                return


def available() -> List[str]:
    """The qualified names of every docstring long enough to be a document (slow: parses everything)."""
    return [name for rel in source_files() for name, doc in _docstrings(rel) if len(doc.split()) >= MIN_WORDS]
