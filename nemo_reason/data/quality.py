"""Per-document quality scores in [0, 1], from a registry of scorers; a fast heuristic one built in.

``heuristic`` applies the Gopher quality rules (Rae et al. 2021, appendix A) and FineWeb's line
rules as *soft* checks: each rule gives 1 when the document is inside the rule's bound and falls
linearly to 0 as it moves away, and the score is their geometric mean (each floored at 0.01), so
one clearly failed rule costs a lot, as in Gopher's all-rules filter, while scores still spread over
[0, 1] and can be cut into buckets (``prepare-data --quality-buckets``) that serve as blend sources, or
thresholded (``--quality-min``). Rules and bounds:

=================  ================================================  ==============
rule               measures                                          passes when
=================  ================================================  ==============
words              number of words                                   >= 50
mean_word_len      mean characters per word                          3 .. 10
symbols            ``#`` and ellipses per word                        <= 0.1
bullets            lines starting with a bullet                      <= 90%
ellipsis_lines     lines ending in an ellipsis                       <= 30%
alpha_words        words containing a letter                         >= 80%
stopwords          distinct Gopher stop words present                >= 2
dup_lines          characters in repeated lines                      <= 30%
top_bigram         characters in the most frequent word 2-gram       <= 20%
punct_lines        lines ending in punctuation (FineWeb)             >= 12%
=================  ================================================  ==============

It measures *web-text* quality: tables and terse templated problems score lower. A scorer
is any ``text -> float``; register one with ``@QUALITY_SCORERS.register("name")`` on a factory, or
name it as ``package.module:attribute`` (a callable, or a factory when the attribute is a class).
"""

from __future__ import annotations

import importlib
import math
import re
from collections import Counter
from typing import Callable, Dict

from nemo_reason.registry import Registry

QUALITY_SCORERS: Registry = Registry("quality scorer")
Scorer = Callable[[str], float]

_WORD = re.compile(r"\S+")
_BULLETS = ("-", "*", "\u2022", "\u2023", "\u25cf", "\u25e6", "\u2043")
_ELLIPSES = ("...", "\u2026")
_PUNCT_END = (".", "!", "?", '"', "'", "\u201d")
STOPWORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})


def _at_least(value: float, bound: float) -> float:
    return 1.0 if value >= bound else max(0.0, value / bound)


def _at_most(value: float, bound: float, zero_at: float) -> float:
    """1 up to ``bound``, falling linearly to 0 at ``zero_at``."""
    if value <= bound:
        return 1.0
    return max(0.0, 1.0 - (value - bound) / (zero_at - bound))


def heuristic_rules(text: str) -> Dict[str, float]:
    """Each rule's soft score in [0, 1] (see the module docstring)."""
    words = _WORD.findall(text)
    n = len(words)
    if n == 0:
        return {"words": 0.0}
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()] or [text.strip()]
    lower = [w.lower().strip(".,;:!?\"'()[]") for w in words]
    mean_len = sum(map(len, words)) / n
    symbols = sum(text.count(s) for s in ("#",) + _ELLIPSES) / n
    line_counts = Counter(lines)
    dup_chars = sum(len(ln) * c for ln, c in line_counts.items() if c > 1)
    bigrams = Counter(zip(lower, lower[1:]))
    top = bigrams.most_common(1)
    top_frac = (sum(len(w) for w in top[0][0]) * top[0][1] / max(1, sum(map(len, lower)))) if top and top[0][1] > 1 else 0.0
    return {
        "words": _at_least(n, 50),
        "mean_word_len": 1.0 if 3 <= mean_len <= 10 else (_at_least(mean_len, 3) if mean_len < 3 else _at_most(mean_len, 10, 20)),
        "symbols": _at_most(symbols, 0.1, 0.5),
        "bullets": _at_most(sum(ln.startswith(_BULLETS) for ln in lines) / len(lines), 0.9, 1.0 + 1e-9),
        "ellipsis_lines": _at_most(sum(ln.endswith(_ELLIPSES) for ln in lines) / len(lines), 0.3, 1.0),
        "alpha_words": _at_least(sum(any(c.isalpha() for c in w) for w in words) / n, 0.8),
        "stopwords": _at_least(len(STOPWORDS.intersection(lower)), 2),
        "dup_lines": _at_most(dup_chars / max(1, sum(map(len, lines))), 0.3, 1.0),
        "top_bigram": _at_most(top_frac, 0.2, 0.6),
        "punct_lines": _at_least(sum(ln.endswith(_PUNCT_END) for ln in lines) / len(lines), 0.12),
    }


def heuristic_score(text: str) -> float:
    """Geometric mean of the rules' soft scores (each floored at 0.01): one clearly failed rule
    pulls the score well down, as it would drop the document in Gopher's all-rules filter."""
    rules = heuristic_rules(text)
    if len(rules) == 1:  # no words at all
        return 0.0
    return round(math.exp(sum(math.log(max(v, 0.01)) for v in rules.values()) / len(rules)), 6)


@QUALITY_SCORERS.register("heuristic", "Gopher and FineWeb rules as soft checks, averaged")
def _heuristic() -> Scorer:
    return heuristic_score


@QUALITY_SCORERS.register("length", "words / 200, capped at 1: a baseline that prefers long documents")
def _length() -> Scorer:
    return lambda text: min(1.0, len(_WORD.findall(text)) / 200.0)


def build_scorer(name: str) -> Scorer:
    """A registered scorer, or ``package.module:attribute`` (a callable or a class to instantiate)."""
    if ":" in name:
        mod, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as exc:
            raise KeyError(f"quality scorer {name!r}: {exc}") from None
        if isinstance(obj, type):
            obj = obj()
        return getattr(obj, "score", obj)
    return QUALITY_SCORERS.get(name)()


def bucket_edges(spec: str) -> list:
    """``"0.3,0.6"`` -> ``[0.0, 0.3, 0.6, 1.0]``: buckets ``[lo, hi)``, the last one closed."""
    cuts = sorted(float(x) for x in spec.split(",") if x.strip())
    if not cuts or any(not 0.0 < c < 1.0 for c in cuts) or len(set(cuts)) != len(cuts):
        raise ValueError(f"quality buckets {spec!r}: give distinct cut points strictly between 0 and 1, e.g. 0.3,0.6")
    return [0.0] + cuts + [1.0]


def bucket_of(score: float, edges: list) -> int:
    for i in range(len(edges) - 2, -1, -1):
        if score >= edges[i]:
            return i
    return 0
