"""Loss functions per step kind, in the shape Megatron's pipeline schedules expect.

A ``forward_step(data_iterator, model)`` returns ``(output_tensor, loss_func)``; the schedule
calls ``loss_func(output_tensor)`` on the last pipeline stage, which returns the loss to
back-propagate and a dict of detached values to report. Megatron divides the returned loss by the
number of micro-batches itself.

Context parallelism (``parallel.cp = C``): every CP rank reads the whole micro-batch and keeps its
two sequence chunks (:func:`batch_on_this_cp_rank`). Each rank's loss is its local masked sum
divided by the token count of the *whole* sequence; Megatron's schedule multiplies a two-value
loss function's result by ``C`` and DDP averages gradients over data x context parallel ranks, so
the gradient equals one process's over the full sequence. The reported ``[sum, count]`` pairs are
local, and the loop's all-reduce adds them up to the global token mean.
"""

from __future__ import annotations

from functools import partial

import torch
from megatron.core.utils import get_batch_on_this_cp_rank

from nemo_reason.registry import Registry

LOSSES: Registry = Registry("loss")


def batch_on_this_cp_rank(batch: dict):
    """This CP rank's part of a micro-batch and the micro-batch's loss-token count.

    Tensors ``[b, s]`` become ``[b, 2 * s / (2C)]``: chunks ``r`` and ``2C-1-r`` of ``2C``
    (Megatron's ``get_batch_on_this_cp_rank``, the layout its RoPE and CP attention expect). The
    count is over the whole sequence, taken before slicing; at ``C = 1`` nothing is sliced."""
    num_tokens = batch["loss_mask"].sum()
    return get_batch_on_this_cp_rank(dict(batch)), num_tokens


def _masked_token_mean(loss_mask: torch.Tensor, num_tokens: torch.Tensor, output_tensor: torch.Tensor):
    """Masked mean over the micro-batch's ``num_tokens`` loss tokens (whole sequence, all CP ranks);
    ``loss_mask`` and ``output_tensor`` are this rank's part."""
    losses = output_tensor.float().reshape(-1)
    mask = loss_mask.reshape(-1).float()
    loss_sum = torch.sum(losses * mask)
    # Report the local sum and count so that averages over micro-batches and ranks are exact.
    report = torch.stack([loss_sum.detach(), mask.sum().detach()])
    return loss_sum / num_tokens.to(loss_sum).clamp(min=1.0), {"lm loss": report}


def lm_inputs(batch: dict, device):
    """``tokens, labels, position_ids, loss_mask`` of a micro-batch, on ``device``."""
    return tuple(batch[k].to(device, non_blocking=True) for k in ("tokens", "labels", "position_ids", "loss_mask"))


@LOSSES.register("lm")
def lm_forward_step(data_iterator, model):
    """Next-token cross-entropy (Megatron's vocab-parallel loss inside GPTModel)."""
    batch, num_tokens = batch_on_this_cp_rank(next(data_iterator))
    device = next(model.parameters()).device
    tokens, labels, position_ids, loss_mask = lm_inputs(batch, device)
    output = model(tokens, position_ids, None, labels=labels)
    return output, partial(_masked_token_mean, loss_mask, num_tokens.to(device))


def packed_seq_params_of(cu_seqlens: torch.Tensor):
    """Megatron's ``PackedSeqParams`` ("thd") for one packed row: ``cu_seqlens`` ``[segments + 1]``
    (int32, 0 .. s; the padded tail its own segment), as :mod:`nemo_reason.data.packing` writes it."""
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = cu_seqlens[cu_seqlens >= 0].to(torch.int32)  # drop the collate padding (-1)
    longest = int((cu[1:] - cu[:-1]).max())
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                           max_seqlen_q=longest, max_seqlen_kv=longest)


@LOSSES.register("sft")
def sft_forward_step(data_iterator, model):
    """Cross-entropy on the assistant's tokens (``loss_mask``) of SFT samples; a packed sample (one
    row holding several conversations, with ``cu_seqlens``) runs with attention and positions reset
    at each boundary through Megatron's ``packed_seq_params``. Reported as ``"lm loss"``."""
    batch = next(data_iterator)
    device = next(model.parameters()).device
    packed = None
    if "cu_seqlens" in batch:
        if batch["tokens"].shape[0] != 1:
            raise ValueError("a packed SFT micro-batch holds one row of several conversations: "
                             "set trainer.micro_batch_size=1")
        packed = packed_seq_params_of(batch["cu_seqlens"][0].to(device))
    num_tokens = batch["loss_mask"].sum()
    tokens, labels, position_ids, loss_mask = lm_inputs(batch, device)
    output = model(tokens, position_ids, None, labels=labels, packed_seq_params=packed)
    return output, partial(_masked_token_mean, loss_mask, num_tokens.to(device))
