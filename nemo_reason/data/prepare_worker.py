"""The per-chunk work of prepare-data, and running it on worker processes in input order.

A worker turns a :class:`~nemo_reason.data.readers.Chunk` into a :class:`ChunkResult`, one entry
per line in ``status`` (``OK``, ``EMPTY``: tokenizes to nothing and is skipped like Megatron-LM
does, ``BLANK``: an empty line, ``BAD``: malformed, with the reason in ``bad``), and for the OK
documents, in order: their token ids (output dtype, EOD appended) concatenated in one array with
their ``lengths``, quality scores, and dedup keys (exact digests, or MinHash LSH band keys).
Columns instead of one tuple per document keep the transfer back to the deciding process cheap.

Texts of a chunk are tokenized in one ``tokenize_batch`` call. :func:`map_ordered` feeds chunks
to a ``multiprocessing`` pool (``fork`` where there is one: workers start in milliseconds and
inherit the loaded modules) with a bounded number in flight and yields results in input order;
with one worker it runs in this process.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import signal
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Tuple

import numpy as np

from nemo_reason.data.readers import text_of  # noqa: F401  (re-exported; bpe reads texts without this module)

OK, EMPTY, BLANK, BAD = "ok", "empty", "blank", "bad"


@dataclass(frozen=True)
class WorkerSpec:
    tokenizer: str
    tokenizer_path: str | None
    cache_dir: str
    json_key: str
    append_eod: bool
    dtype: str  # numpy dtype string
    dedup: str
    minhash_threshold: float
    minhash_perms: int
    minhash_ngram: int
    quality_scorer: str  # "" when no score is needed


_STATE: dict = {}


def init_worker(spec: WorkerSpec, in_main: bool = False) -> None:
    from nemo_reason.data.quality import build_scorer
    from nemo_reason.data.tokenizer import build_tokenizer

    if not in_main:  # the parent handles Ctrl-C / SIGTERM and then terminates the pool
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _STATE.clear()
    _STATE["spec"] = spec
    _STATE["tok"] = build_tokenizer(spec.tokenizer, spec.tokenizer_path, spec.cache_dir)
    _STATE["scorer"] = build_scorer(spec.quality_scorer) if spec.quality_scorer else None


@dataclass
class ChunkResult:
    status: List[str]
    bad: dict  # line index -> reason
    nbytes: List[int]  # per line (0 for blank and bad lines)
    ids: np.ndarray  # the OK documents' ids, concatenated
    lengths: np.ndarray  # int64, one per OK document
    quality: Optional[List[float]]
    keys: Optional[list]


def process_chunk(chunk) -> ChunkResult:
    spec: WorkerSpec = _STATE["spec"]
    tok, scorer = _STATE["tok"], _STATE["scorer"]
    status: List[str] = [BLANK] * len(chunk.items)
    nbytes = [0] * len(chunk.items)
    bad = {}
    pieces: List[str] = []
    owners: List[Tuple[int, int, str]] = []  # (line index, number of pieces, whole text)
    for i, raw in enumerate(chunk.items):
        if chunk.kind != "values" and not raw.strip():
            continue
        try:
            text = text_of(raw, chunk.kind, spec.json_key)
        except ValueError as exc:
            status[i], bad[i] = BAD, str(exc)
            continue
        parts = text if isinstance(text, list) else [text]
        pieces.extend(parts)
        owners.append((i, len(parts), "".join(parts)))
    encoded = tok.tokenize_batch(pieces) if pieces else []
    docs, quality, keys = [], [], []
    pos = 0
    for i, n, text in owners:
        ids = list(encoded[pos]) if n == 1 else [t for piece in encoded[pos:pos + n] for t in piece]
        pos += n
        nbytes[i] = len(text.encode("utf-8"))
        if not ids:
            status[i] = EMPTY
            continue
        if spec.append_eod:
            ids.append(tok.eod)
        status[i] = OK
        docs.append(ids)
        if scorer:
            quality.append(float(scorer(text)))
        if spec.dedup != "none":
            keys.append(_dedup_key(text, spec))
    lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
    ids = np.fromiter((t for d in docs for t in d), dtype=np.dtype(spec.dtype), count=int(lengths.sum()))
    return ChunkResult(status, bad, nbytes, ids, lengths, quality if scorer else None,
                       keys if spec.dedup != "none" else None)


def _dedup_key(text: str, spec: WorkerSpec):
    if spec.dedup == "exact":
        from nemo_reason.data.dedup import exact_key

        return exact_key(text)
    from nemo_reason.data.dedup import minhash_keys

    return minhash_keys(text, spec.minhash_threshold, spec.minhash_perms, spec.minhash_ngram)


def map_ordered(chunks: Iterable, spec: WorkerSpec, workers: int) -> Iterator[Tuple[object, ChunkResult]]:
    """``(chunk, results)`` in input order; at most ``2 * workers + 2`` chunks are in flight."""
    if workers <= 1:
        init_worker(spec, in_main=True)
        for chunk in chunks:
            yield chunk, process_chunk(chunk)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    pool = ctx.Pool(workers, initializer=init_worker, initargs=(spec,))
    try:
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append((chunk, pool.apply_async(process_chunk, (chunk,))))
            if len(pending) >= 2 * workers + 2:
                c, res = pending.popleft()
                yield c, res.get()
        while pending:
            c, res = pending.popleft()
            yield c, res.get()
        pool.close()
        pool.join()
    finally:
        pool.terminate()
