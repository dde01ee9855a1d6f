"""Loss functions per step kind, in the shape Megatron's pipeline schedules expect.

A ``forward_step(data_iterator, model)`` returns ``(output_tensor, loss_func)``; the schedule
calls ``loss_func(output_tensor)`` on the last pipeline stage, which returns the loss to
back-propagate and a dict of detached values to report. Megatron divides the returned loss by the
number of micro-batches itself.
"""

from __future__ import annotations

from functools import partial

import torch

from nemo_reason.registry import Registry

LOSSES: Registry = Registry("loss")


def _masked_token_mean(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    losses = output_tensor.float().reshape(-1)
    mask = loss_mask.reshape(-1).float()
    loss_sum = torch.sum(losses * mask)
    tokens = mask.sum().clamp(min=1.0)
    # Report the sum and the count so that averages over micro-batches and ranks are exact.
    return loss_sum / tokens, {"lm loss": torch.stack([loss_sum.detach(), tokens.detach()])}


@LOSSES.register("lm")
def lm_forward_step(data_iterator, model):
    """Next-token cross-entropy (Megatron's vocab-parallel loss inside GPTModel)."""
    batch = next(data_iterator)
    device = next(model.parameters()).device
    tokens = batch["tokens"].to(device, non_blocking=True)
    labels = batch["labels"].to(device, non_blocking=True)
    position_ids = batch["position_ids"].to(device, non_blocking=True)
    loss_mask = batch["loss_mask"].to(device, non_blocking=True)
    output = model(tokens, position_ids, None, labels=labels)
    return output, partial(_masked_token_mean, loss_mask)
