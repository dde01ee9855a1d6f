"""Write and find Megatron indexed datasets (``.bin``/``.idx``), atomically.

Documents are tokenized, EOD-terminated and written with Megatron-Core's
``IndexedDatasetBuilder`` to temporary files that are renamed into place only when complete,
so an interrupted build never looks finished and is simply redone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, List, Optional

import numpy as np

# torch and Megatron's IndexedDatasetBuilder are imported where a dataset is written: the cache helpers
# here serve light commands too (`plan`, `show-checkpoint`, the bundled tokenizer's cache).


def cache_root(cache_dir: str) -> Path:
    return Path(cache_dir or os.environ.get("NEMO_REASON_CACHE", Path.home() / ".cache" / "nemo_reason"))


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A failed or interrupted block leaves no file at ``path`` (and removes its temporary file),
    so whoever finds ``path`` finds it whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_indexed(prefix: str | Path, docs: Iterable[str], tokenizer, dtype=np.int32) -> dict:
    """Tokenize ``docs`` into ``prefix.bin``/``prefix.idx``; returns stats (docs, tokens, unigram entropy)."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp = prefix.with_name(prefix.name + f".tmp{os.getpid()}")
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

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

    # File tokenizers share a name, and the tokenizer may not be data.tokenizer's (a step continuing
    # from a checkpoint tokenizes with the checkpoint's): key by the tokenizer's identity.
    if tokenizer_name != "byte" or type(tokenizer).__name__ != "ByteTokenizer":
        tokenizer_name = tokenizer_name if tokenizer_name != "byte" else "file"
        ident = hashlib.sha1(tokenizer.unique_description.encode()).hexdigest()[:10]
        tokenizer_name = f"{tokenizer_name}-{ident}"
    prefix = synthetic_prefix(cache_dir, num_documents, seed, tokenizer_name)
    if not is_complete(prefix):
        write_indexed(prefix, (d["text"] for d in generate(num_documents, seed)), tokenizer)
    return prefix


class IndexedWriter:
    """One Megatron indexed dataset being written: ``<prefix>.tmp<pid>.*`` until :meth:`commit`.

    Documents go through Megatron's ``IndexedDatasetBuilder`` (one sequence per document), so the
    files are byte for byte what Megatron-LM's preprocess_data.py writes for the same token ids
    (:meth:`add_many` fills the builder's lists as ``add_document`` would; a test compares bytes).
    :meth:`commit` renames into place in the order that keeps an interrupted commit incomplete-
    looking (old ``.idx`` removed, then ``.bin``, ``.json``, ``.idx``); :meth:`abort` removes the
    temporary files.
    """

    def __init__(self, prefix: str | Path, dtype):
        self.prefix = str(prefix)
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        self.tmp = f"{self.prefix}.tmp{os.getpid()}"
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        self.builder = IndexedDatasetBuilder(f"{self.tmp}.bin", dtype=dtype)
        self.documents = 0
        self.tokens = 0

    def add(self, ids) -> None:
        ids = np.asarray(ids)
        self.builder.add_document(ids, [ids.size])
        self.documents += 1
        self.tokens += int(ids.size)

    def add_many(self, docs: List[np.ndarray]) -> None:
        """What ``add`` does for each of ``docs``, with one write: the builder's per-document
        ``add_document`` (a copy and a write each) costs more than tokenizing with a cheap tokenizer."""
        if not docs:
            return
        b = self.builder
        b.data_file.write(np.concatenate(docs).astype(b.dtype, copy=False).tobytes(order="C"))
        first = len(b.sequence_lengths)
        b.sequence_lengths.extend(int(d.size) for d in docs)
        b.document_indices.extend(range(first + 1, first + len(docs) + 1))
        self.documents += len(docs)
        self.tokens += sum(int(d.size) for d in docs)

    def finalize(self, meta: dict) -> None:
        self.builder.finalize(f"{self.tmp}.idx")
        Path(f"{self.tmp}.json").write_text(json.dumps(meta, indent=1, default=str))

    def commit(self) -> None:
        Path(f"{self.prefix}.idx").unlink(missing_ok=True)
        for ext in ("bin", "json", "idx"):
            os.replace(f"{self.tmp}.{ext}", f"{self.prefix}.{ext}")

    def abort(self) -> None:
        if not self.builder.data_file.closed:
            self.builder.data_file.close()
        for ext in ("bin", "idx", "json"):
            Path(f"{self.tmp}.{ext}").unlink(missing_ok=True)


def is_prepared(prefix: str | Path, fingerprint: str) -> bool:
    """The output is complete and was made from the inputs and options ``fingerprint`` stands for."""
    if not is_complete(prefix):
        return False
    stats = read_stats(prefix)
    return bool(stats) and stats.get("fingerprint") == fingerprint


def clean_stale(prefix: str | Path) -> List[str]:
    """Remove temporary files of ``prefix`` left by runs that were killed (their process is gone)."""
    removed = []
    p = Path(prefix)
    for f in p.parent.glob(f"{p.name}.tmp*"):
        pid = f.name[len(p.name) + 4:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            f.unlink(missing_ok=True)
            removed.append(str(f))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
