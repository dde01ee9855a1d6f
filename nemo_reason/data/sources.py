"""Named data sources -> Megatron indexed-dataset path prefixes, built once into the cache.

A named source is a bundled corpus (:mod:`nemo_reason.data.corpora`), optionally sized, seeded
and filtered on record fields, tokenized and written as ``.bin``/``.idx`` into
``<cache>/sources/``::

    bundled:NAME[:N[:SEED]][@FILTER[,FILTER...]]
    FILTER = FIELD OP VALUE       OP in >= <= > < = != ; FIELD a record field, or `quality`

    bundled:math                         5000 math problems, seed 1234
    bundled:prose:1000                   1000 standard-library docstrings
    bundled:math:20000:7@difficulty>=4   the hard ones out of 20000 at seed 7
    bundled:mcq@subject=geography
    bundled:prose@quality>=0.6           a quality bucket: the heuristic scorer's score >= 0.6
    bundled:prose@quality>=0.3,quality<0.6

``quality`` is the built-in heuristic score (:mod:`nemo_reason.data.quality`); comparisons are
numeric when both sides are numbers, else ``=``/``!=`` compare strings. A record without the
field is left out. The cache entry is keyed by the source string, the corpus version, the
tokenizer's identity (its ``unique_identifiers``, which include a file tokenizer's SHA-256) and,
for prose, the Python version; it is written atomically under a file lock, so concurrent
callers build it once. Each entry has a ``.json`` with documents, tokens and the unigram entropy.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import operator
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

SOURCE_VERSION = 1
_OPS: Dict[str, Callable] = {">=": operator.ge, "<=": operator.le, "!=": operator.ne, ">": operator.gt,
                             "<": operator.lt, "==": operator.eq, "=": operator.eq}
_FILTER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|!=|==|>|<|=)\s*(.+?)\s*$")
GRAMMAR = "bundled:NAME[:N[:SEED]][@FIELD>=VALUE,...]"


class SourceError(ValueError):
    """A malformed or unknown source name; the message shows the grammar and the names."""


@dataclass(frozen=True)
class SourceSpec:
    corpus: str
    num: int
    seed: int
    filters: Tuple[Tuple[str, str, object], ...]  # (field, op, value)

    def keep(self, record: Dict, quality: Optional[float]) -> bool:
        for field, op, value in self.filters:
            have = quality if field == "quality" else record.get(field)
            if have is None:
                return False
            if isinstance(value, float) and isinstance(have, (int, float)) and not isinstance(have, bool):
                if not _OPS[op](float(have), value):
                    return False
            elif op in ("=", "==", "!="):
                if not _OPS[op](str(have), str(value if not isinstance(value, float) else _num_str(value))):
                    return False
            else:
                return False
        return True


def _num_str(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


def bundled_names() -> List[str]:
    """Corpus names usable as ``bundled:NAME``."""
    from nemo_reason.data.corpora import CORPORA

    return CORPORA.names()


def parse_source(name: str) -> SourceSpec:
    from nemo_reason.data.corpora import DEFAULT_SEED, DEFAULT_SIZE

    if not name.startswith("bundled:"):
        raise SourceError(f"{name!r} is not a named source ({GRAMMAR})")
    body, at, filt = name[len("bundled:"):].partition("@")
    parts = body.split(":")
    corpus = parts[0]
    if corpus not in bundled_names():
        raise SourceError(f"{name!r}: no bundled corpus {corpus!r} (have: {', '.join(bundled_names())}); "
                          f"grammar: {GRAMMAR}")
    if len(parts) > 3 or not all(p.isdigit() for p in parts[1:]):
        raise SourceError(f"{name!r}: size and seed must be integers ({GRAMMAR})")
    num = int(parts[1]) if len(parts) > 1 else DEFAULT_SIZE.get(corpus, 1000)
    seed = int(parts[2]) if len(parts) > 2 else DEFAULT_SEED
    if num < 1:
        raise SourceError(f"{name!r}: the size must be >= 1")
    filters = []
    for f in filter(None, (s.strip() for s in filt.split(","))) if filt else ():
        m = _FILTER.match(f)
        if not m:
            raise SourceError(f"{name!r}: filter {f!r} is not FIELD OP VALUE with OP one of >= <= > < = !=")
        field, op, raw = m.groups()
        try:
            value: object = float(raw)
        except ValueError:
            value = raw
            if op not in ("=", "==", "!="):
                raise SourceError(f"{name!r}: {f!r} compares with {op} a value that is not a number") from None
        if field == "quality" and not isinstance(value, float):
            raise SourceError(f"{name!r}: quality is compared with a number in [0, 1]")
        filters.append((field, op, value))
    if at and not filters:
        raise SourceError(f"{name!r}: nothing after '@' ({GRAMMAR})")
    return SourceSpec(corpus, num, seed, tuple(filters))


def check_source(name: str) -> None:
    """Raise :class:`SourceError` if ``name`` is not a valid named source (cheap: builds nothing)."""
    parse_source(name)


def _records(spec: SourceSpec) -> Iterator[Dict]:
    from nemo_reason.data.corpora import generate

    scorer = None
    if any(f[0] == "quality" for f in spec.filters):
        from nemo_reason.data.quality import heuristic_score as scorer
    for rec in generate(spec.corpus, spec.num, spec.seed):
        if spec.keep(rec, scorer(rec["text"]) if scorer else None):
            yield rec


def source_prefix(name: str, tokenizer, cache_dir: str = "") -> Path:
    """Where :func:`resolve_source` puts ``name`` for ``tokenizer`` (without building it)."""
    from nemo_reason.data.corpora import VERSION
    from nemo_reason.data.indexed import cache_root

    spec = parse_source(name)
    key = {"v": SOURCE_VERSION, "corpora": VERSION, "source": name, "tokenizer": dict(tokenizer.unique_identifiers)}
    if spec.corpus == "prose":
        key["python"] = list(sys.version_info[:2])
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9.=-]+", "_", name[len("bundled:"):])[:60]
    return cache_root(cache_dir) / "sources" / f"{slug}-{digest}"


def resolve_source(name: str, tokenizer, cache_dir: str = "", tokenizer_name: str = "") -> str:
    """The Megatron path prefix of named source ``name`` tokenized with ``tokenizer``; built on first use.

    ``tokenizer_name`` is accepted for callers that have it; the cache key uses the tokenizer's
    own identity instead.
    """
    from megatron.core.datasets.indexed_dataset import DType

    from nemo_reason.data.indexed import IndexedWriter, is_complete, read_stats

    spec = parse_source(name)
    prefix = source_prefix(name, tokenizer, cache_dir)
    if is_complete(prefix):
        return str(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{prefix}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete(prefix):
            return str(prefix)
        texts = [rec["text"] for rec in _records(spec)]
        if not texts:
            raise SourceError(f"{name!r}: the filters leave no document out of {spec.num}")
        writer = IndexedWriter(prefix, DType.optimal_dtype(tokenizer.vocab_size))
        try:
            batch = getattr(tokenizer, "tokenize_batch", None)
            encoded = batch(texts) if batch else [tokenizer.tokenize(t) for t in texts]
            counts: Dict[int, int] = {}
            for ids in encoded:
                ids = list(ids) + [tokenizer.eod]
                writer.add(ids)
                for t in ids:
                    counts[t] = counts.get(t, 0) + 1
            writer.finalize({"source": name, "documents": writer.documents, "tokens": writer.tokens,
                             "unigram_entropy_nats": _entropy(counts), "vocab_size": tokenizer.vocab_size,
                             "tokenizer": dict(tokenizer.unique_identifiers), "created_by": "nemo_reason.data.sources"})
            writer.commit()
        except BaseException:
            writer.abort()
            raise
    assert read_stats(prefix) is not None
    return str(prefix)


def _entropy(counts: Dict[int, int]) -> float:
    import math

    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values()) if total else 0.0
