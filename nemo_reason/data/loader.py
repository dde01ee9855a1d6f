"""Training and validation data for a rank: Megatron blended ``GPTDataset`` phases and a resumable sampler.

Each data phase (``data.phases``; a plain ``data.blend`` or ``data.source`` is one phase) is built
with Megatron-Core's ``BlendedMegatronDatasetBuilder``: one ``GPTDataset`` per source (Megatron's
shuffled, seeded sample index, cached under ``<cache>/index_cache`` like Megatron-LM's
``--data-cache-path``) and, for several sources, a ``BlendedDataset`` that interleaves them in
proportion to their weights. Phase k is seeded ``run.seed + k`` (so a source used by two phases is
not replayed in the same order) and sized for exactly the samples of its steps; the phases are laid
end to end in a :class:`~nemo_reason.data.phases.PhasedDataset` (boundary rule there and in
docs/data.md).

:class:`PretrainingSampler` walks the run's samples in global-batch order: micro-batch ``k`` of
data-parallel rank ``r`` holds samples ``[k*mbs*dp + r*mbs, ... + mbs)``, so the order depends only
on the seed and the number of consumed samples, and a resumed run sees exactly the samples an
uninterrupted one would, mid-phase or at a boundary. Tensor/pipeline/context-parallel peers read
the same samples; data-parallel ranks read disjoint slices.

Validation: ``data.valid_blend`` (one fixed set, Megatron-LM's ``--valid-data-path``), else the
``split`` validation documents of the phase that is training when the evaluation runs.
"""

from __future__ import annotations

import fcntl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from nemo_reason.config.schema import ConfigError, RunConfig
from nemo_reason.data import indexed
from nemo_reason.data.blend import normalized, resolve_path
from nemo_reason.data.phases import PhasedDataset, PhaseSpan, eval_slots, phase_at, plan_phases, switch_message
from nemo_reason.data.tokenizer import build_tokenizer


@dataclass
class DataBundle:
    tokenizer: object
    # Global sample g of the run (0 <= g < max_steps x global_batch) -> its phase's blended dataset.
    train: PhasedDataset
    # Evaluation e reads [e, e + 1) x eval_iters x global_batch; None without evaluation.
    valid: Optional[PhasedDataset]
    phases: List[PhaseSpan]
    # Per phase: (Megatron path prefix, normalised weight) per source.
    blends: List[List[Tuple[str, float]]]
    stats: Optional[dict]
    # True when data.phases is configured: metrics then carry "phase".
    phased: bool = False
    tokens_per_step: int = 0
    # Per phase: the Megatron datasets (BlendedDataset or GPTDataset) behind `train`, for inspection.
    train_datasets: list = field(default_factory=list)
    # Per phase: the blend's paths as configured (named sources by name), for the log.
    names: List[List[str]] = field(default_factory=list)

    def phase_at(self, step_index: int) -> PhaseSpan:
        """The phase of the optimizer step with this 0-based index (metrics step ``step_index + 1``)."""
        return phase_at(self.phases, step_index)

    def phase_switch(self, step_index: int) -> Optional[str]:
        """The log line when the step about to run (0-based index) is the first of a new phase."""
        return switch_message(self.phases, step_index, self.tokens_per_step)

    def describe(self, start_step: int = 0) -> str:
        lines = []
        for k, (span, blend) in enumerate(zip(self.phases, self.blends)):
            names = self.names[k] if k < len(self.names) else [p for p, _ in blend]
            mix = ", ".join(f"{w:.2f} {name}" for name, (_, w) in zip(names, blend))
            lines.append(f"[nemo-reason] data phase {span.index + 1} ({span.name}): steps {span.start_step + 1}-"
                         f"{span.end_step}, tokens {span.start_step * self.tokens_per_step:,}-"
                         f"{span.end_step * self.tokens_per_step:,}: {mix}")
        if start_step and self.phases[-1].end_step > start_step:
            lines.append(f"[nemo-reason] resuming in data phase {self.phase_at(start_step).name} at step {start_step + 1}")
        return "\n".join(lines)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def resolve_blend(entries: Sequence, cfg: RunConfig, tokenizer) -> List[Tuple[str, float]]:
    """Blend entries -> [(path prefix, normalised weight)]; named sources are built by rank 0 first."""
    if _rank() == 0:
        prefixes = [resolve_path(p, cfg.data, tokenizer) for p, _ in normalized(entries)]
    _barrier()
    if _rank() != 0:
        prefixes = [resolve_path(p, cfg.data, tokenizer) for p, _ in normalized(entries)]
    return [(pre, w) for pre, (_, w) in zip(prefixes, normalized(entries))]


def _megatron_blend(blend: List[Tuple[str, float]]):
    # One source: Megatron's plain GPTDataset (weights None), no BlendedDataset around it.
    return ([p for p, _ in blend], None if len(blend) == 1 else [w for _, w in blend])


def _dataset_config(cfg: RunConfig, tokenizer, seed: int, **blend) -> GPTDatasetConfig:
    return GPTDatasetConfig(
        random_seed=seed,
        sequence_length=cfg.trainer.seq_length,
        path_to_cache=str(indexed.cache_root(cfg.data.cache_dir) / "index_cache"),
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        mmap_bin_files=True,
        **blend,
    )


_SPLITS = ("train", "valid", "test")


def split_ranges(weights: Sequence[float], num_documents: int) -> List[Optional[Tuple[int, int]]]:
    """The document range ``[begin, end)`` of each split (None: weight 0), as Megatron computes it
    (``parse_and_normalize_split``, ``convert_split_vector_to_split_matrix`` and
    ``BlendedMegatronDatasetBuilder._build_megatron_dataset_splits``)."""
    total = float(sum(weights))
    out, cum = [], 0.0
    for w in weights:
        lo, cum = cum, cum + w / total
        out.append((int(round(lo * num_documents)), int(round(cum * num_documents))) if cum > lo else None)
    return out


def check_splits(prefixes: Sequence[str], weights: Optional[Sequence[float]], split_text: str) -> None:
    """ConfigError when a split Megatron will build has no tokens in a source: its ``GPTDataset``
    would loop forever in ``_get_num_epochs`` (it adds epochs of 0 tokens until it has the samples
    asked for, and it asks for at least one token even when no sample is needed). ``weights`` None:
    each source is used whole (a validation blend)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    for prefix in prefixes:
        ds = IndexedDataset(prefix, mmap=True)
        lengths = ds.sequence_lengths.astype("int64")  # a copy: the index's memory map closes with `ds`
        del ds
        ranges = split_ranges(weights, len(lengths)) if weights is not None else [(0, len(lengths))]
        sizes = [None if r is None else (r[1] - r[0], int(lengths[r[0]:r[1]].sum())) for r in ranges]
        empty = [i for i, sz in enumerate(sizes) if sz is not None and sz[1] == 0]
        if not empty:
            continue
        n = len(lengths)
        if weights is None:
            raise ConfigError(f"data.valid_blend source {prefix} has no documents: give a prepared dataset "
                              "with at least one document")
        per = ", ".join(f"{_SPLITS[i]} {'-' if sz is None else f'{sz[0]} documents / {sz[1]:,} tokens'}"
                        for i, sz in enumerate(sizes))
        fix = (f"data.split=[{n - 2},1,1] (one document each for valid and test)" if n >= 3 else
               "data.split=[1,0,0] with trainer.eval_every=0 (train only), or a larger dataset")
        raise ConfigError(
            f"data.split={split_text} leaves the {' and '.join(_SPLITS[i] for i in empty)} split of {prefix} "
            f"({n} documents) empty: {per}. Megatron's GPTDataset cannot fill an empty split (it would loop "
            f"forever); give every split with a weight at least one document, e.g. {fix}")


def build_datasets(cfg: RunConfig, sizes: List[int], tokenizer, seed: int, blend=None, valid_blend=None):
    """[train, valid, test] from Megatron's builder. Every rank calls it together: Megatron builds on
    rank 0 first (writing the cached indices), then on the others (reading them). A split that
    cannot be filled is refused first (:func:`check_splits`)."""
    if valid_blend is not None:
        check_splits([p for p, _ in valid_blend], None, "")
        kw = dict(blend_per_split=[None, _megatron_blend(valid_blend), None])
    else:
        split = cfg.data.split_string()
        check_splits([p for p, _ in blend], cfg.data.split_weights(), split)
        kw = dict(blend=_megatron_blend(blend), split=split)
    config = _dataset_config(cfg, tokenizer, seed, **kw)
    builder = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config)
    if _rank() != 0:
        return builder.build()  # reads what rank 0 wrote (Megatron's own barrier orders them)
    # Megatron writes its index cache (document/sample/shuffle .npy files) in place, not atomically,
    # and only when the files are missing: two runs sharing a cache that build the same index at
    # once read each other's half-written files (EOFError). Rank 0 of every run builds under one
    # lock per cache; the second run then finds the files complete and only reads them.
    lock_path = Path(config.path_to_cache) / ".build.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return builder.build()


def _mixture_stats(spans: Sequence[PhaseSpan], blends) -> Optional[dict]:
    """Unigram entropy of the run's data: the sources' entropies weighted by their share of the
    run's samples (a lower bound of the mixture's own entropy); None when a source has no stats."""
    total_steps = spans[-1].end_step
    total = 0.0
    for span, blend in zip(spans, blends):
        for prefix, w in blend:
            st = indexed.read_stats(prefix)
            if not st or "unigram_entropy_nats" not in st:
                return None
            total += span.steps / total_steps * w * st["unigram_entropy_nats"]
    return {"unigram_entropy_nats": total}


def build_data(cfg: RunConfig, dp_size: int, tokenizer=None) -> DataBundle:
    """The phased training data and the validation data; ``tokenizer``: the one to tokenize with
    (default: ``data.tokenizer``)."""
    tok = tokenizer or build_tokenizer(cfg.data.tokenizer, cfg.data.tokenizer_path, cfg.data.cache_dir)
    t = cfg.trainer
    gbs = t.global_batch_size
    phase_cfgs = cfg.data.train_phases()
    spans = plan_phases([p.name for p in phase_cfgs], [p.share for p in phase_cfgs], t.max_steps)
    blends = [resolve_blend(p.blend, cfg, tok) for p in phase_cfgs]
    eval_every = t.eval_every
    fixed_valid = resolve_blend(cfg.data.valid_blend, cfg, tok) if cfg.data.valid_blend and eval_every else None

    train_segments, valid_segments, train_datasets = [], [], []
    for span, blend in zip(spans, blends):
        n = span.steps * gbs
        first, last = eval_slots(span, eval_every)
        v = 0 if fixed_valid else (last - first) * t.eval_iters * gbs
        train, valid, _ = build_datasets(cfg, [n, v, 0], tok, cfg.run.seed + span.index, blend=blend)
        if train is None or len(train) < n:
            raise ConfigError(
                f"data phase '{span.name}' builds {0 if train is None else len(train)} training samples, fewer "
                f"than its {span.steps} steps x global_batch_size = {n}: check data.split gives the train split "
                "a share")
        train_segments.append((train, n))
        train_datasets.append(train)
        if v and valid is not None:
            valid_segments.append((valid, v))
    if fixed_valid:
        v = (t.max_steps // eval_every + 1) * t.eval_iters * gbs
        _, valid, _ = build_datasets(cfg, [0, v, 0], tok, cfg.run.seed, valid_blend=fixed_valid)
        valid_segments = [(valid, v)]
    return DataBundle(
        tokenizer=tok,
        train=PhasedDataset(train_segments),
        valid=PhasedDataset(valid_segments) if valid_segments else None,
        phases=spans,
        blends=blends,
        stats=_mixture_stats(spans, blends),
        phased=bool(cfg.data.phases),
        tokens_per_step=gbs * t.seq_length,
        train_datasets=train_datasets,
        names=[[e.path for e in p.blend] for p in phase_cfgs],
    )


class PretrainingSampler:
    """Yields this DP rank's micro-batches of sample indices, starting at ``consumed_samples``."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 dp_rank: int, dp_size: int):
        self.total = total_samples
        self.consumed = consumed_samples
        self.mbs = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size

    def __iter__(self) -> Iterator[list]:
        step = self.mbs * self.dp_size
        start = self.consumed
        while start + step <= self.total:
            first = start + self.dp_rank * self.mbs
            yield list(range(first, first + self.mbs))
            start += step


_SAMPLE_KEYS = ("tokens", "labels", "loss_mask", "position_ids")
_PACKED_KEYS = ("cu_seqlens", "seq_idx")


def _collate(samples):
    out = {}
    for key in _SAMPLE_KEYS:
        out[key] = torch.stack([torch.as_tensor(s[key]) for s in samples])
    out["tokens"] = out["tokens"].long()
    out["labels"] = out["labels"].long()
    out["position_ids"] = out["position_ids"].long()
    out["loss_mask"] = out["loss_mask"].float()
    # Packed SFT's boundaries (cu_seqlens [segments+1], seq_idx [s]) are stacked; ragged cu_seqlens
    # are right-padded with -1 to the longest in the micro-batch. Other keys a dataset returns (GPTDataset
    # adds some) are dropped, as before: the CP split slices every tensor it is given.
    for key in _PACKED_KEYS:
        if key not in samples[0]:
            continue
        vals = [torch.as_tensor(s[key]) for s in samples]
        if vals[0].dim() == 1 and len({v.shape[0] for v in vals}) > 1:
            vals = [torch.nn.functional.pad(v, (0, max(u.shape[0] for u in vals) - v.shape[0]), value=-1)
                    for v in vals]
        out[key] = torch.stack(vals)
    return out


def micro_batches(dataset, consumed_samples: int, micro_batch_size: int, dp_rank: int,
                  dp_size: int, total_samples: Optional[int] = None) -> Iterator[dict]:
    total = len(dataset) if total_samples is None else min(total_samples, len(dataset))
    sampler = PretrainingSampler(total, consumed_samples, micro_batch_size, dp_rank, dp_size)
    for idx in sampler:
        yield _collate([dataset[i] for i in idx])
