"""Sequence packing: tokenized documents -> fixed-length training samples, packed or one per sample.

A document is its token ids and a per-token ``trained`` flag (the assistant's tokens). A sample
has ``tokens``, ``labels``, ``loss_mask`` (float32) and ``position_ids`` of length ``seq_length``,
as Megatron's ``GPTDataset`` gives them: ``labels[j]`` is the token after ``tokens[j]`` and
``loss_mask[j]`` says whether that label is trained. Within a document, ``labels[j] = ids[j+1]``;
the label of a document's last token is masked (0, loss 0): it is never the next document's first
token. Padding (token 0, label 0, loss 0) fills a sample's tail.

Packed samples also carry the document boundaries two ways:

* ``cu_seqlens`` int32 ``[segments + 1]``: cumulative segment lengths, ``0 ... seq_length``, as
  Megatron/TE's ``PackedSeqParams(cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens,
  qkv_format="thd")`` takes them for one sequence (for a micro-batch of ``b`` samples, offset
  sample ``k``'s by ``k * seq_length``; collation pads the ragged lengths with -1);
* ``seq_idx`` int32 ``[seq_length]``: the segment index of each token (mamba-ssm's convention).

The padded tail, when there is one, is a segment of its own (all masked), so every token belongs
to exactly one segment and ``cu_seqlens[-1] == seq_length``. ``position_ids`` restart at 0 in every
segment. Packing is greedy over the given (already shuffled) order: ``sequential`` starts a new
sample when the next document does not fit; ``first_fit`` puts it in the first open sample with
room (among the last 256 opened). Left out: best-fit and length-sorted packing, splitting a
document across samples.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from nemo_reason.registry import Registry

# A tokenized document: ids (int64) and, per token, whether it is the assistant's (trained).
Document = Tuple[np.ndarray, np.ndarray]

PACKERS: Registry = Registry("packing method")


@PACKERS.register("sequential", "in order; a new sample when the next document does not fit")
def pack_sequential(lengths: Sequence[int], seq_length: int) -> List[List[int]]:
    bins: List[List[int]] = []
    room = 0
    for i, n in enumerate(lengths):
        if not bins or n > room:
            bins.append([])
            room = seq_length
        bins[-1].append(i)
        room -= n
    return bins


@PACKERS.register("first_fit", "each document into the first open sample with room")
def pack_first_fit(lengths: Sequence[int], seq_length: int, window: int = 256) -> List[List[int]]:
    """First fit over the ``window`` most recently opened samples (older ones are closed, as are
    those with less room than the shortest document), so packing stays linear in the documents."""
    bins: List[List[int]] = []
    open_bins: List[int] = []  # indices into bins, oldest first
    rooms: Dict[int, int] = {}
    shortest = min(lengths, default=0)
    for i, n in enumerate(lengths):
        for b in open_bins:
            if n <= rooms[b]:
                bins[b].append(i)
                rooms[b] -= n
                if rooms[b] < shortest:
                    open_bins.remove(b)
                break
        else:
            bins.append([i])
            rooms[len(bins) - 1] = seq_length - n
            if seq_length - n >= shortest:
                open_bins.append(len(bins) - 1)
                if len(open_bins) > window:
                    open_bins.pop(0)
    return bins


def pack(lengths: Sequence[int], seq_length: int, method: str = "first_fit") -> List[List[int]]:
    """Document indices per sample; every length must be at most ``seq_length``."""
    too_long = [i for i, n in enumerate(lengths) if n > seq_length]
    if too_long:
        raise ValueError(f"documents {too_long[:5]} are longer than seq_length={seq_length}")
    return PACKERS.get(method)(lengths, seq_length)


def _labels_and_mask(ids: np.ndarray, trained: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    labels = np.zeros_like(ids)
    labels[:-1] = ids[1:]
    mask = np.zeros(len(ids), dtype=np.float32)
    mask[:-1] = trained[1:]
    return labels, mask


def packed_sample(docs: Sequence[Document], seq_length: int) -> Dict[str, torch.Tensor]:
    """One packed sample of ``docs`` (their lengths sum to at most ``seq_length``)."""
    tokens = np.zeros(seq_length, dtype=np.int64)
    labels = np.zeros(seq_length, dtype=np.int64)
    mask = np.zeros(seq_length, dtype=np.float32)
    positions = np.zeros(seq_length, dtype=np.int64)
    seq_idx = np.zeros(seq_length, dtype=np.int32)
    bounds = [0]
    for k, (ids, trained) in enumerate(docs):
        a, b = bounds[-1], bounds[-1] + len(ids)
        if b > seq_length:
            raise ValueError(f"documents of {b} tokens do not fit seq_length={seq_length}")
        tokens[a:b] = ids
        labels[a:b], mask[a:b] = _labels_and_mask(ids, trained)
        positions[a:b] = np.arange(b - a)
        seq_idx[a:b] = k
        bounds.append(b)
    if bounds[-1] < seq_length:  # the padded tail: one segment of its own
        positions[bounds[-1]:] = np.arange(seq_length - bounds[-1])
        seq_idx[bounds[-1]:] = len(docs)
        bounds.append(seq_length)
    return {
        "tokens": torch.from_numpy(tokens),
        "labels": torch.from_numpy(labels),
        "loss_mask": torch.from_numpy(mask),
        "position_ids": torch.from_numpy(positions),
        "cu_seqlens": torch.tensor(bounds, dtype=torch.int32),
        "seq_idx": torch.from_numpy(seq_idx),
    }


def unpacked_sample(doc: Document, seq_length: int) -> Dict[str, torch.Tensor]:
    """One document, right-padded to ``seq_length`` (padding masked); the four GPTDataset keys."""
    s = packed_sample([doc], seq_length)
    s["position_ids"] = torch.arange(seq_length, dtype=torch.int64)  # one sequence, as GPTDataset's
    return {k: s[k] for k in ("tokens", "labels", "loss_mask", "position_ids")}
