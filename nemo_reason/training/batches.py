"""Batch sources over datasets of fixed-length samples, and LM-loss evaluation on a validation set.

:class:`DatasetBatches` feeds the loop from a map-style dataset of ``{"tokens", "labels",
"loss_mask", "position_ids"}`` samples (Megatron's ``GPTDataset``, a blend of them in phases, or
packed SFT sequences): this data-parallel rank's micro-batches in order, starting at the samples
already consumed, so a resumed run continues the very same sequence. Under the interleaved
pipeline schedule each model chunk gets its own iterator over the same micro-batches, as
Megatron-LM does.

:func:`dataset_evaluator` returns ``evaluate(state) -> {"eval_loss": ...}`` for the loop: a fixed,
fresh slice of ``eval_iters`` global batches per evaluation, reduced exactly over ranks.
"""

from __future__ import annotations

from typing import Callable, Optional

from nemo_reason.data.loader import micro_batches
from nemo_reason.training.loop import BatchSource, metric_name
from nemo_reason.training.step import eval_step, reduce_metrics


def _iterators(dataset, consumed: int, mbs: int, dims, total: Optional[int] = None):
    its = [micro_batches(dataset, consumed, mbs, dims.dp_rank, dims.dp, total) for _ in range(dims.vpp or 1)]
    return its[0] if len(its) == 1 else its


class DatasetBatches(BatchSource):
    """Sequential micro-batches of ``dataset`` for ``global_batch_size`` samples per step."""

    def __init__(self, dataset, trainer, dims, data=None):
        self.dataset, self.t, self.dims, self.data = dataset, trainer, dims, data
        self.samples_per_step = trainer.global_batch_size
        self.tokens_per_step = trainer.global_batch_size * trainer.seq_length
        self._it = None

    def num_micro_batches(self, step: int) -> int:
        return self.t.global_batch_size // (self.t.micro_batch_size * self.dims.dp)

    def iterator(self, state):
        if self._it is None:  # one iterator for the whole run, from where the state stands
            self._it = _iterators(self.dataset, state.consumed, self.t.micro_batch_size, self.dims)
        return self._it

    def announce(self, step: int) -> Optional[str]:
        # The data switches phase inside the dataset (data/phases.py); this only announces it.
        return self.data.phase_switch(step) if self.data is not None else None

    def record(self, step: int) -> dict:
        if self.data is not None and self.data.phased:
            return {"phase": self.data.phase_at(step - 1).name}
        return {}


def dataset_evaluator(dataset, trainer, dims, forward_step: Callable) -> Optional[Callable]:
    """``evaluate(state)``: mean validation metrics over ``eval_iters`` global batches of ``dataset``,
    a new slice at each evaluation (``None`` without a dataset)."""
    if dataset is None:
        return None
    t = trainer

    def evaluate(state) -> dict:
        evals_done = state.step // t.eval_every - 1
        start = evals_done * t.eval_iters * t.global_batch_size
        its = _iterators(dataset, start, t.micro_batch_size, dims, total=start + t.eval_iters * t.global_batch_size)
        num_micro = t.global_batch_size // (t.micro_batch_size * dims.dp)
        reports = []
        for _ in range(t.eval_iters):
            reports += eval_step(state, forward_step, its, num_micro, t.seq_length, t.micro_batch_size)
        return {f"eval_{metric_name(k)}": v for k, v in reduce_metrics(reports).items()}

    return evaluate
