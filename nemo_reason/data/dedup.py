"""Exact and near-duplicate document removal: normalized-text hashes, and MinHash with LSH banding.

*Exact*: a 128-bit BLAKE2b digest of the text lower-cased with whitespace collapsed; the first
document with a digest is kept. *Near*: MinHash signatures over word n-grams (``ngram`` words,
FineWeb uses 5), cut into ``b`` bands of ``r`` rows (locality-sensitive hashing); a document whose
band shares a bucket with an earlier document's is dropped, so pairs above the Jaccard
``threshold`` collide with high probability and pairs well below it rarely do. ``(b, r)`` minimise
the summed false-positive and false-negative areas of the S-curve ``1 - (1 - s^r)^b`` for the
threshold, the rule (and the result) of datasketch's ``MinHashLSH``: 0.7 with 128 permutations
gives 14 bands of 9 rows.

The signature and its band keys are computed where the text is (the prepare-data workers); the
process that decides holds only sets of 64-bit band keys (about ``b`` x 60 bytes a document) and
does ``b`` set look-ups per document, in input order, so the result does not depend on the number
of workers. (datasketch's ``MinHash``/``MinHashLSH`` objects cost about 0.35 ms a document in
that one process, which capped prepare-data near 1,500 docs/s; this is the same scheme without
the objects.)

Hashes: words by CRC-32 (deterministic across processes, unlike ``hash()``), n-grams as a
polynomial of word hashes mod 2^32, mixed with MurmurHash3's finalizer, then ``num_perm`` seeded
affine permutations mod 2^32 (datasketch 2's ``affine32`` scheme). Left out: cross-run (global)
dedup over several prepare-data calls and disk-backed indexes; one call dedups its own inputs in
memory.
"""

from __future__ import annotations

import functools
import hashlib
import re
import zlib
from typing import Iterable, List, Tuple

import numpy as np

_NON_WORD = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")
_P = np.uint64(1_000_003)
_MASK32 = np.uint64(0xFFFFFFFF)
MINHASH_SEED = 1


def normalize(text: str) -> str:
    return _SPACE.sub(" ", text.lower()).strip()


def exact_key(text: str) -> bytes:
    return hashlib.blake2b(normalize(text).encode("utf-8"), digest_size=16).digest()


def shingle_hashes(text: str, ngram: int = 5) -> np.ndarray:
    """Distinct 32-bit hashes of the word ``ngram``-grams of the normalized, punctuation-free text."""
    words = _NON_WORD.sub(" ", text.lower()).split()
    if not words:
        return np.zeros(1, dtype=np.uint64)
    w = np.fromiter((zlib.crc32(x.encode("utf-8")) for x in words), dtype=np.uint64, count=len(words))
    n = min(ngram, len(w))
    h = np.zeros(len(w) - n + 1, dtype=np.uint64)
    for j in range(n):  # h = sum_j w[i+j] * P^(n-1-j), wrapping mod 2^64, then cut to 32 bits
        h = h * _P + w[j:len(w) - n + 1 + j]
    return np.unique(h & _MASK32)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's finalizer: spreads every input bit over the 32 output bits."""
    h = h ^ (h >> np.uint64(16))
    h = (h * np.uint64(0x85EBCA6B)) & _MASK32
    h = h ^ (h >> np.uint64(13))
    h = (h * np.uint64(0xC2B2AE35)) & _MASK32
    return h ^ (h >> np.uint64(16))


@functools.lru_cache(maxsize=4)
def _permutations(num_perm: int):
    """``num_perm`` seeded affine maps ``h -> a*h + b mod 2^32`` (odd ``a``: each is a bijection)."""
    rng = np.random.RandomState(MINHASH_SEED)
    a = rng.randint(0, 1 << 31, num_perm).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.randint(0, 1 << 31, num_perm).astype(np.uint64) * np.uint64(2) + np.uint64(rng.randint(0, 2))
    return a, b


def minhash_signature(text: str, num_perm: int = 128, ngram: int = 5) -> np.ndarray:
    """The MinHash signature of ``text``'s n-gram set: ``num_perm`` uint32 minima."""
    h = _fmix32(shingle_hashes(text, ngram))
    a, b = _permutations(num_perm)
    sig = np.full(num_perm, 0xFFFFFFFF, dtype=np.uint64)
    for i in range(0, len(h), 4096):  # bounded temporaries for long documents
        block = h[i:i + 4096, None]
        sig = np.minimum(sig, ((block * a + b) & _MASK32).min(axis=0))
    return sig.astype(np.uint32)


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


class ExactDedup:
    """Remembers digests; :meth:`seen` says whether one came before (and records it)."""

    def __init__(self):
        self._keys = set()

    def seen(self, key: bytes) -> bool:
        if key in self._keys:
            return True
        self._keys.add(key)
        return False


def _s_curve(s: np.ndarray, b: int, r: int) -> np.ndarray:
    return 1.0 - (1.0 - s ** r) ** b


@functools.lru_cache(maxsize=16)
def lsh_params(threshold: float, num_perm: int) -> Tuple[int, int]:
    """``(bands, rows)`` with ``bands * rows <= num_perm`` minimising false positives below the
    threshold plus false negatives above it (areas under the S-curve, equal weights)."""
    lo = np.linspace(0.0, threshold, 201)
    hi = np.linspace(threshold, 1.0, 201)
    best, opt = float("inf"), (1, num_perm)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            err = np.trapezoid(_s_curve(lo, b, r), lo) + np.trapezoid(1.0 - _s_curve(hi, b, r), hi)
            if err < best:
                best, opt = err, (b, r)
    return opt


def band_keys(signature: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per band: a polynomial hash of the band's ``rows`` signature values."""
    m = signature[: bands * rows].astype(np.uint64).reshape(bands, rows)
    powers = np.uint64(0x9E3779B97F4A7C15) ** np.arange(rows, dtype=np.uint64)  # wraps mod 2^64
    return (m * powers).sum(axis=1, dtype=np.uint64)


def minhash_keys(text: str, threshold: float = 0.7, num_perm: int = 128, ngram: int = 5) -> np.ndarray:
    """The LSH band keys of ``text`` (what :class:`NearDedup` takes)."""
    return band_keys(minhash_signature(text, num_perm, ngram), *lsh_params(threshold, num_perm))


class NearDedup:
    """LSH buckets, one set per band; :meth:`seen` says whether a band of ``keys`` collided with an
    earlier document's (and otherwise records them)."""

    def __init__(self, bands: int):
        self._tables = [set() for _ in range(bands)]

    def seen(self, keys) -> bool:
        keys = keys.tolist() if isinstance(keys, np.ndarray) else list(keys)
        if any(k in t for k, t in zip(keys, self._tables)):
            return True
        for k, t in zip(keys, self._tables):
            t.add(k)
        return False


def keep_mask(texts: Iterable[str], method: str = "exact", threshold: float = 0.7, num_perm: int = 128,
              ngram: int = 5) -> List[bool]:
    """For in-memory use: ``True`` for each text kept (the first of each duplicate group)."""
    if method == "exact":
        d = ExactDedup()
        return [not d.seen(exact_key(t)) for t in texts]
    if method == "minhash":
        nd = NearDedup(lsh_params(threshold, num_perm)[0])
        return [not nd.seen(minhash_keys(t, threshold, num_perm, ngram)) for t in texts]
    raise ValueError(f"dedup method {method!r}: use exact or minhash")
