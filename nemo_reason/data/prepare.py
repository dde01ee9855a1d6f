"""``prepare-data``: JSONL/Parquet documents -> Megatron indexed datasets (``.bin``/``.idx``).

The output is what Megatron-LM's ``tools/preprocess_data.py`` writes, through the same
``megatron.core.datasets.indexed_dataset.IndexedDatasetBuilder``: one sequence per document,
EOD appended to every non-empty document, token dtype ``DType.optimal_dtype(vocab_size)``
(uint16 below 65,500 tokens, else int32), files named ``<output_prefix>_<key>_document``. Files
made by either tool train in both.

How it runs:

1. Everything is checked before any work: inputs exist and are readable, the tokenizer loads,
   options are sane (a :class:`~nemo_reason.config.schema.ConfigError` otherwise).
2. A fingerprint of the inputs (path, size, mtime) and every option that changes the output is
   compared with the one stored beside a finished output: equal means "already prepared".
3. The reader (this process) cuts the inputs into chunks; ``workers`` processes parse, tokenize,
   score and hash them; results come back in input order (at most a few chunks in flight), so
   the output is identical for any number of workers.
4. This process drops duplicates (exact digests, or MinHash LSH; :mod:`nemo_reason.data.dedup`),
   low-quality documents, or routes them into quality buckets (:mod:`nemo_reason.data.quality`),
   and appends the rest to builders writing ``<prefix>.tmp<pid>.bin``.
5. Finished: ``.idx`` and a ``.json`` (stats, fingerprint) are written, then renamed into place:
   any old ``.idx`` removed first, ``.bin``, ``.json``, and the ``.idx`` last, so an interrupted
   run never leaves a complete-looking output. On any error the temporary files are removed; a
   killed run's leftovers are removed by the next run.

A malformed line stops the run with ``file:line`` and the reason; ``skip_bad`` skips such lines
and counts them in the summary.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from nemo_reason.config.schema import ConfigError
from nemo_reason.data import prepare_worker as pw
from nemo_reason.data.indexed import IndexedWriter, clean_stale, is_prepared
from nemo_reason.data.readers import PrepareError  # noqa: F401  (re-exported)
from nemo_reason.data.readers import InputError, check_input, expand_inputs, input_fingerprint, read_chunks

FORMAT_VERSION = 1
DEDUP_METHODS = ("none", "exact", "minhash")


@dataclass
class PrepareConfig:
    inputs: List[str]
    output_prefix: str
    # Registry name (byte, bundled, hf, sentencepiece); hf/sentencepiece need tokenizer_path.
    tokenizer: str = "bundled"
    tokenizer_path: Optional[str] = None
    # The JSON field (Parquet column) holding the text: a string, or a list of strings (sentences).
    json_key: str = "text"
    # Worker processes; 0: one per CPU core.
    workers: int = 0
    skip_bad: bool = False
    append_eod: bool = True
    dedup: str = "none"
    minhash_threshold: float = 0.7
    minhash_ngram: int = 5
    minhash_perms: int = 128
    quality_scorer: str = "heuristic"
    quality_min: Optional[float] = None
    # Cut points, e.g. "0.3,0.6": one output per bucket [0,0.3) [0.3,0.6) [0.6,1].
    quality_buckets: str = ""
    # Name outputs <prefix>_<key>_document like Megatron-LM; False: exactly <prefix>.
    megatron_names: bool = True
    force: bool = False
    chunk_docs: int = 512
    # Seconds between progress lines; 0: 1 on a terminal, 10 otherwise; negative: quiet.
    progress_every: float = 0.0
    cache_dir: str = ""

    def validate(self) -> None:
        from nemo_reason.data.quality import QUALITY_SCORERS, bucket_edges

        if not self.inputs:
            raise ConfigError("prepare-data needs --input FILE [FILE ...]")
        if not self.output_prefix:
            raise ConfigError("prepare-data needs --output-prefix PREFIX")
        if self.output_prefix.endswith((".bin", ".idx")):
            raise ConfigError(f"--output-prefix {self.output_prefix}: give the prefix, without .bin/.idx")
        if self.workers < 0:
            raise ConfigError(f"--workers {self.workers}: use 1 or more (0: one per core)")
        if self.dedup not in DEDUP_METHODS:
            raise ConfigError(f"--dedup {self.dedup}: use one of {', '.join(DEDUP_METHODS)}")
        if not 0.0 < self.minhash_threshold <= 1.0:
            raise ConfigError(f"--minhash-threshold {self.minhash_threshold}: use a Jaccard similarity in (0, 1]")
        if self.minhash_ngram < 1 or self.minhash_perms < 16:
            raise ConfigError("--minhash-ngram must be >= 1 and --minhash-perms >= 16")
        if self.quality_min is not None and not 0.0 <= self.quality_min <= 1.0:
            raise ConfigError(f"--quality-min {self.quality_min}: scores are in [0, 1]")
        if self.quality_buckets:
            try:
                bucket_edges(self.quality_buckets)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.wants_quality and ":" not in self.quality_scorer and self.quality_scorer not in QUALITY_SCORERS:
            raise ConfigError(f"--quality-scorer {self.quality_scorer}: not registered "
                              f"({', '.join(QUALITY_SCORERS.names())}) and not a module:attribute")
        if self.chunk_docs < 1:
            raise ConfigError("chunk_docs must be >= 1")

    @property
    def wants_quality(self) -> bool:
        return self.quality_min is not None or bool(self.quality_buckets)

    @property
    def base_prefix(self) -> str:
        p = os.path.expanduser(self.output_prefix)
        return f"{p}_{self.json_key}_document" if self.megatron_names else p

    def output_prefixes(self) -> List[str]:
        if not self.quality_buckets:
            return [self.base_prefix]
        from nemo_reason.data.quality import bucket_edges

        e = bucket_edges(self.quality_buckets)
        return [f"{self.base_prefix}_quality{e[i]:g}-{e[i + 1]:g}" for i in range(len(e) - 1)]


@dataclass
class PrepareResult:
    prefixes: List[str]
    stats: Dict
    already_prepared: bool = False


@dataclass
class _Counts:
    documents: int = 0
    tokens: int = 0
    bytes: int = 0
    lines: int = 0
    blank: int = 0
    empty: int = 0
    bad: int = 0
    duplicates: int = 0
    below_quality: int = 0
    bad_examples: List[str] = field(default_factory=list)


class _Progress:
    def __init__(self, every: float, num_files: int):
        tty = sys.stderr.isatty()
        self.every = every if every else (1.0 if tty else 10.0)
        self.tty, self.num_files, self.width = tty, num_files, 0
        self.start = self.last = time.perf_counter()

    def update(self, c: _Counts, file_index: int, final: bool = False) -> None:
        now = time.perf_counter()
        if self.every < 0 or (not final and now - self.last < self.every):
            return
        self.last = now
        dt = max(now - self.start, 1e-9)
        line = (f"[prepare-data] {c.lines:,} docs read, {c.documents:,} kept, {c.bytes / 1e6:,.1f} MB | "
                f"{c.lines / dt:,.0f} docs/s, {c.bytes / 1e6 / dt:,.2f} MB/s | file {file_index + 1}/{self.num_files}")
        if self.tty:  # one line, redrawn; padded so a shorter line hides the longer one before
            print("\r" + line.ljust(self.width), end="\n" if final else "", file=sys.stderr, flush=True)
            self.width = len(line)
        else:
            print(line, file=sys.stderr, flush=True)


def _default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _fingerprint(cfg: PrepareConfig, paths: List[str], tok, dtype) -> str:
    spec = {"format": FORMAT_VERSION, "inputs": input_fingerprint(paths), "tokenizer": dict(tok.unique_identifiers),
            "json_key": cfg.json_key, "append_eod": cfg.append_eod, "skip_bad": cfg.skip_bad,
            "dedup": cfg.dedup, "dtype": np.dtype(dtype).name, "quality_min": cfg.quality_min,
            "quality_buckets": cfg.quality_buckets}
    if cfg.dedup == "minhash":
        spec["minhash"] = [cfg.minhash_threshold, cfg.minhash_ngram, cfg.minhash_perms]
    if cfg.wants_quality:
        spec["quality_scorer"] = cfg.quality_scorer
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _load(cfg: PrepareConfig):
    """Check everything and load the tokenizer: the errors a user can fix before work starts."""
    from megatron.core.datasets.indexed_dataset import DType

    from nemo_reason.data.tokenizer import TokenizerError, build_tokenizer

    cfg.validate()
    try:
        paths = expand_inputs(cfg.inputs)
        for p in paths:
            check_input(p, cfg.json_key)
    except InputError as exc:
        raise ConfigError(str(exc)) from None
    out_dir = Path(cfg.base_prefix).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise ConfigError(f"--output-prefix {cfg.output_prefix}: {out_dir} is not writable")
    try:
        tok = build_tokenizer(cfg.tokenizer, cfg.tokenizer_path, cfg.cache_dir)
    except (TokenizerError, KeyError) as exc:
        raise ConfigError(f"--tokenizer: {exc.args[0]}") from None
    return paths, tok, DType.optimal_dtype(tok.vocab_size)


def prepare(cfg: PrepareConfig) -> PrepareResult:
    """Run prepare-data (see the module docstring); returns the output prefixes and the summary."""
    paths, tok, dtype = _load(cfg)
    fp = _fingerprint(cfg, paths, tok, dtype)
    prefixes = cfg.output_prefixes()
    if not cfg.force and all(is_prepared(p, fp) for p in prefixes):
        stats = json.loads(Path(f"{prefixes[0]}.json").read_text()).get("run", {})
        print(f"[prepare-data] already prepared: {', '.join(prefixes)} (inputs and options unchanged; "
              "--force redoes it)", file=sys.stderr)
        return PrepareResult(prefixes, stats, already_prepared=True)
    for p in prefixes:
        clean_stale(p)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread per worker; `workers` sets the parallelism
    workers = cfg.workers or _default_workers()
    spec = pw.WorkerSpec(cfg.tokenizer, cfg.tokenizer_path, cfg.cache_dir, cfg.json_key, cfg.append_eod,
                         np.dtype(dtype).str, cfg.dedup, cfg.minhash_threshold, cfg.minhash_perms, cfg.minhash_ngram,
                         cfg.quality_scorer if cfg.wants_quality else "")
    writers = [IndexedWriter(p, dtype) for p in prefixes]
    start = time.perf_counter()
    try:
        counts = _run(cfg, paths, spec, workers, writers, tok.vocab_size)
        seconds = time.perf_counter() - start
        summary = _summary(cfg, counts, seconds, workers, writers, paths)
        for w in writers:
            meta = {"fingerprint": fp, "documents": w.documents, "tokens": w.tokens,
                    "unigram_entropy_nats": _entropy(w.unigram), "vocab_size": tok.vocab_size,
                    "dtype": np.dtype(dtype).name, "tokenizer": dict(tok.unique_identifiers),
                    "created_by": "nemo-reason prepare-data", "options": asdict(cfg), "run": summary}
            w.finalize(meta)
        for w in writers:
            w.commit()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    _print_summary(summary, prefixes)
    return PrepareResult(prefixes, summary)


def _run(cfg, paths, spec, workers, writers, vocab_size):
    from nemo_reason.data.dedup import ExactDedup, NearDedup, lsh_params
    from nemo_reason.data.quality import bucket_edges, bucket_of

    counts = _Counts()
    progress = _Progress(cfg.progress_every, len(paths))
    edges = bucket_edges(cfg.quality_buckets) if cfg.quality_buckets else None
    dedup = (ExactDedup() if cfg.dedup == "exact" else
             NearDedup(lsh_params(cfg.minhash_threshold, cfg.minhash_perms)[0]) if cfg.dedup == "minhash" else None)
    for w in writers:
        w.unigram = np.zeros(vocab_size, dtype=np.int64)
    chunks = read_chunks(paths, cfg.json_key, max_docs=cfg.chunk_docs)
    file_index = 0
    for chunk, res in pw.map_ordered(chunks, spec, workers):
        file_index = chunk.file_index
        ends = np.cumsum(res.lengths)
        kept = [[] for _ in writers]
        doc = -1  # index among the chunk's OK documents
        for i, status in enumerate(res.status):
            counts.lines += 1
            counts.bytes += res.nbytes[i]
            if status == pw.OK:
                doc += 1
            elif status == pw.BLANK:
                counts.blank += 1
                continue
            elif status == pw.EMPTY:
                counts.empty += 1
                continue
            else:
                where = f"{paths[chunk.file_index]}:{chunk.first_line + i}"
                if not cfg.skip_bad:
                    raise PrepareError(f"{where}: {res.bad[i]} (--skip-bad skips such lines and counts them)")
                counts.bad += 1
                if len(counts.bad_examples) < 5:
                    counts.bad_examples.append(f"{where}: {res.bad[i]}")
                continue
            if dedup is not None and dedup.seen(res.keys[doc]):
                counts.duplicates += 1
                continue
            quality = res.quality[doc] if res.quality is not None else None
            if cfg.quality_min is not None and quality < cfg.quality_min:
                counts.below_quality += 1
                continue
            target = bucket_of(quality, edges) if edges else 0
            kept[target].append(res.ids[ends[doc] - res.lengths[doc]:ends[doc]])
            counts.documents += 1
        for w, views in zip(writers, kept):
            if views:
                w.add_many(views)
                flat = res.ids if len(views) == len(res.lengths) else np.concatenate(views)
                counts.tokens += flat.size
                w.unigram += np.bincount(flat, minlength=vocab_size)[:vocab_size]
        progress.update(counts, file_index)
    progress.update(counts, file_index, final=True)
    return counts


def _entropy(counts: np.ndarray) -> float:
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


def _summary(cfg, c: _Counts, seconds: float, workers: int, writers, paths) -> Dict:
    return {"documents": c.documents, "tokens": c.tokens, "lines": c.lines, "bytes": c.bytes,
            "skipped_bad": c.bad, "blank_lines": c.blank, "empty_documents": c.empty,
            "duplicates": c.duplicates, "below_quality": c.below_quality, "bad_examples": c.bad_examples,
            "seconds": round(seconds, 3), "docs_per_s": round(c.lines / max(seconds, 1e-9), 1),
            "mb_per_s": round(c.bytes / 1e6 / max(seconds, 1e-9), 3), "workers": workers,
            "inputs": len(paths), "outputs": {w.prefix: {"documents": w.documents, "tokens": w.tokens}
                                              for w in writers}}


def _print_summary(s: Dict, prefixes: List[str]) -> None:
    dropped = [f"{s[k]:,} {label}" for k, label in (("skipped_bad", "bad lines skipped"),
                                                   ("duplicates", "duplicates removed"),
                                                   ("below_quality", "below the quality minimum"),
                                                   ("empty_documents", "empty documents"),
                                                   ("blank_lines", "blank lines")) if s[k]]
    print(f"[prepare-data] {s['documents']:,} documents, {s['tokens']:,} tokens from {s['lines']:,} lines in "
          f"{s['seconds']:.1f} s ({s['docs_per_s']:,.0f} docs/s, {s['mb_per_s']:.2f} MB/s, {s['workers']} workers)"
          + (f"; {'; '.join(dropped)}" if dropped else ""), file=sys.stderr)
    for ex in s["bad_examples"]:
        print(f"[prepare-data]   skipped {ex}", file=sys.stderr)
    for p in prefixes:
        o = s["outputs"][p]
        print(f"[prepare-data] wrote {p}.bin/.idx ({o['documents']:,} documents, {o['tokens']:,} tokens)",
              file=sys.stderr)
