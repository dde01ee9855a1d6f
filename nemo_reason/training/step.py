"""One optimizer step over micro-batches with any ``forward_step``, and the metrics it reports.

A ``forward_step(data_iterator, model) -> (output, loss_func)`` is what Megatron's pipeline
schedules take; ``loss_func(output)`` returns ``(loss, report)`` where ``report`` maps metric names
to ``[sum, count]`` tensors of this micro-batch on this rank (``{"lm loss": [nll_sum, tokens]}``,
``{"kl": [...], "clip_frac": [...]}``, ...). :func:`reduce_metrics` adds every key over the
micro-batches and over all ranks and divides once, so each metric is an exact global mean, not a
mean of means. A scalar report value counts as ``[value, 1]``.

:func:`train_step`: zero the grad buffers, ``get_forward_backward_func()`` over
``num_micro_batches`` micro-batches (no pipelining, 1F1B or interleaved by layout), optimizer step,
scheduler step. :func:`eval_step`: the same forward-only, no update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional

import torch
import torch.distributed as dist
from megatron.core.pipeline_parallel import get_forward_backward_func

from nemo_reason.backend import dist as bdist


@dataclass
class StepOutput:
    metrics: Dict[str, float]      # every reported metric, global mean
    grad_norm: Optional[float]
    update_ok: bool


def _as_pair(value) -> torch.Tensor:
    t = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    t = t.to("cpu", torch.float64).reshape(-1)
    if t.numel() == 2:
        return t
    if t.numel() == 1:
        return torch.stack([t[0], torch.ones((), dtype=torch.float64)])
    raise ValueError(f"a reported metric must be [sum, count] or a scalar, got shape {tuple(value.shape)}")


def reduce_metrics(reports: Iterable[dict]) -> Dict[str, float]:
    """Global means of every ``[sum, count]`` metric in ``reports`` (one dict per micro-batch;
    empty off the last pipeline stage). A collective: every rank calls it."""
    local: Dict[str, torch.Tensor] = {}
    for d in reports:
        for k, v in d.items():
            pair = _as_pair(v)
            local[k] = local[k] + pair if k in local else pair
    keys = sorted(local)
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world > 1:
        # Only the last pipeline stage holds reports: agree on the union of names first.
        gathered: List[Optional[list]] = [None] * world
        dist.all_gather_object(gathered, keys)
        keys = sorted({k for ks in gathered for k in ks})
    if not keys:
        return {}
    total = torch.stack([local.get(k, torch.zeros(2, dtype=torch.float64)) for k in keys])
    if world > 1:
        total = total.to(bdist.device_for(bdist.read_env().local_rank))
        dist.all_reduce(total)
        total = total.cpu()
    return {k: float(total[i, 0] / total[i, 1]) for i, k in enumerate(keys) if total[i, 1] > 0}


def _run_schedule(state, forward_step: Callable, data_iterator, num_micro_batches: int, seq_length: int,
                  micro_batch_size: int, forward_only: bool) -> list:
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=data_iterator,
        model=state.model_or_chunk,
        num_microbatches=num_micro_batches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        decoder_seq_length=seq_length,
        forward_only=forward_only,
    )


def train_step(state, forward_step: Callable, data_iterator, num_micro_batches: int, seq_length: int,
               micro_batch_size: int) -> StepOutput:
    """One optimizer step of ``state`` over ``num_micro_batches`` micro-batches from ``data_iterator``
    (a list of iterators, one per model chunk, under the interleaved schedule)."""
    for m in state.model:
        m.zero_grad_buffer()
    state.optimizer.zero_grad()
    reports = _run_schedule(state, forward_step, data_iterator, num_micro_batches, seq_length, micro_batch_size,
                            forward_only=False)
    update_ok, grad_norm, _ = state.optimizer.step()
    if update_ok:
        state.scheduler.step(increment=1)
    state.step += 1
    return StepOutput(reduce_metrics(reports), float(grad_norm) if grad_norm is not None else None, bool(update_ok))


@torch.no_grad()
def eval_step(state, forward_step: Callable, data_iterator, num_micro_batches: int, seq_length: int,
              micro_batch_size: int) -> list:
    """Forward-only over ``num_micro_batches`` micro-batches; returns the raw per-micro-batch
    reports (pass several steps' worth to :func:`reduce_metrics` at once for one exact mean)."""
    for m in state.model:
        m.eval()
    try:
        return _run_schedule(state, forward_step, data_iterator, num_micro_batches, seq_length, micro_batch_size,
                             forward_only=True)
    finally:
        for m in state.model:
            m.train()
