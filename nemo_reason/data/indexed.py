"""Write and find Megatron indexed datasets (``.bin``/``.idx``), atomically.

Documents are tokenized, EOD-terminated and written with Megatron-Core's
``IndexedDatasetBuilder`` to temporary files that are renamed into place only when complete,
so an interrupted build never looks finished and is simply redone.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder


def cache_root(cache_dir: str) -> Path:
    return Path(cache_dir or os.environ.get("NEMO_REASON_CACHE", Path.home() / ".cache" / "nemo_reason"))


def write_indexed(prefix: str | Path, docs: Iterable[str], tokenizer, dtype=np.int32) -> dict:
    """Tokenize ``docs`` into ``prefix.bin``/``prefix.idx``; returns stats (docs, tokens, unigram entropy)."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp = prefix.with_name(prefix.name + f".tmp{os.getpid()}")
    builder = IndexedDatasetBuilder(f"{tmp}.bin", dtype=dtype)
    counts: Counter = Counter()
    n_docs = 0
    for text in docs:
        ids = tokenizer.tokenize(text) + [tokenizer.eod]
        counts.update(ids)
        builder.add_document(torch.tensor(ids, dtype=torch.int64), [len(ids)])
        n_docs += 1
    builder.finalize(f"{tmp}.idx")
    total = sum(counts.values())
    entropy = -sum(c / total * math.log(c / total) for c in counts.values())
    stats = {"documents": n_docs, "tokens": total, "unigram_entropy_nats": entropy}
    Path(f"{tmp}.json").write_text(json.dumps(stats))
    # .bin first, .idx and the stats last: readers look for the .idx, so its presence means done.
    os.replace(f"{tmp}.bin", f"{prefix}.bin")
    os.replace(f"{tmp}.json", f"{prefix}.json")
    os.replace(f"{tmp}.idx", f"{prefix}.idx")
    return stats


def is_complete(prefix: str | Path) -> bool:
    return Path(f"{prefix}.idx").is_file() and Path(f"{prefix}.bin").is_file()


def read_stats(prefix: str | Path) -> Optional[dict]:
    p = Path(f"{prefix}.json")
    return json.loads(p.read_text()) if p.is_file() else None


def synthetic_prefix(cache_dir: str, num_documents: int, seed: int, tokenizer_name: str) -> Path:
    key = hashlib.sha1(f"v1-{num_documents}-{seed}-{tokenizer_name}".encode()).hexdigest()[:10]
    return cache_root(cache_dir) / "synthetic" / f"corpus_{key}"


def ensure_synthetic(cache_dir: str, num_documents: int, seed: int, tokenizer, tokenizer_name: str) -> Path:
    """Build the synthetic corpus dataset once (cached by its parameters)."""
    from nemo_reason.data.corpus import generate

    prefix = synthetic_prefix(cache_dir, num_documents, seed, tokenizer_name)
    if not is_complete(prefix):
        write_indexed(prefix, (d["text"] for d in generate(num_documents, seed)), tokenizer)
    return prefix
