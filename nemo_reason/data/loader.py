"""Training and validation data for a rank: Megatron ``GPTDataset`` splits and a resumable sampler.

Datasets come from Megatron-Core's ``BlendedMegatronDatasetBuilder`` over an indexed dataset
(the synthetic corpus, or ``data.path_prefix``), with Megatron's shuffled, seeded sample index.
:class:`PretrainingSampler` walks that dataset in global-batch order: micro-batch ``k`` of
data-parallel rank ``r`` holds samples ``[k*mbs*dp + r*mbs, ... + mbs)``, so the order depends
only on the seed and the number of consumed samples, and a resumed run sees exactly the samples
an uninterrupted one would. Tensor/pipeline/context-parallel peers read the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from nemo_reason.config.schema import ConfigError, RunConfig
from nemo_reason.data import indexed
from nemo_reason.data.tokenizer import build_tokenizer


@dataclass
class DataBundle:
    tokenizer: object
    train: GPTDataset
    valid: Optional[GPTDataset]
    prefix: str
    stats: Optional[dict]


def resolve_prefix(cfg: RunConfig, tokenizer) -> str:
    d = cfg.data
    if d.source == "synthetic":
        rank = dist.get_rank() if dist.is_initialized() else 0
        if rank == 0:
            indexed.ensure_synthetic(d.cache_dir, d.num_documents, d.corpus_seed, tokenizer, d.tokenizer)
        if dist.is_initialized():
            dist.barrier()
        return str(indexed.synthetic_prefix(d.cache_dir, d.num_documents, d.corpus_seed, d.tokenizer))
    if not indexed.is_complete(d.path_prefix):
        raise ConfigError(
            f"data.path_prefix={d.path_prefix}: {d.path_prefix}.bin/.idx not found "
            "(write them with Megatron-LM's tools/preprocess_data.py)"
        )
    return d.path_prefix


def build_data(cfg: RunConfig, dp_size: int) -> DataBundle:
    tok = build_tokenizer(cfg.data.tokenizer)
    prefix = resolve_prefix(cfg, tok)
    t = cfg.trainer
    train_samples = t.max_steps * t.global_batch_size
    evals = (t.max_steps // t.eval_every + 1) if t.eval_every else 0
    valid_samples = evals * t.eval_iters * t.global_batch_size
    ds_cfg = GPTDatasetConfig(
        random_seed=cfg.run.seed,
        sequence_length=t.seq_length,
        blend=([prefix], None),
        split=cfg.data.split,
        path_to_cache=str(indexed.cache_root(cfg.data.cache_dir) / "index_cache"),
        tokenizer=tok,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        mmap_bin_files=True,
    )
    rank = dist.get_rank() if dist.is_initialized() else 0
    # Rank 0 writes the cached sample indices first; the others then read them.
    sizes = [train_samples, valid_samples, 0]
    datasets = None
    if rank == 0:
        datasets = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, ds_cfg).build()
    if dist.is_initialized():
        dist.barrier()
        if rank != 0:
            datasets = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, ds_cfg).build()
    train, valid, _ = datasets
    if train is None or len(train) < train_samples:
        raise ConfigError(
            f"the training split has {0 if train is None else len(train)} samples, fewer than "
            f"trainer.max_steps x global_batch_size = {train_samples}"
        )
    return DataBundle(tok, train, valid if valid_samples else None, prefix, indexed.read_stats(prefix))


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


def _collate(samples):
    out = {}
    for key in ("tokens", "labels", "loss_mask", "position_ids"):
        out[key] = torch.stack([torch.as_tensor(s[key]) for s in samples])
    out["tokens"] = out["tokens"].long()
    out["labels"] = out["labels"].long()
    out["position_ids"] = out["position_ids"].long()
    out["loss_mask"] = out["loss_mask"].float()
    return out


def micro_batches(dataset, consumed_samples: int, micro_batch_size: int, dp_rank: int,
                  dp_size: int, total_samples: Optional[int] = None) -> Iterator[dict]:
    total = len(dataset) if total_samples is None else min(total_samples, len(dataset))
    sampler = PretrainingSampler(total, consumed_samples, micro_batch_size, dp_rank, dp_size)
    for idx in sampler:
        yield _collate([dataset[i] for i in idx])
