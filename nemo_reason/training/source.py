"""What a training step's batches come from: the interface :func:`nemo_reason.training.loop.run_loop`
reads. Imports nothing (step modules subclass it at import time and stay light)."""

from __future__ import annotations

from typing import Optional


class BatchSource:
    """Where a training step's micro-batches come from. Subclass and override what differs."""

    #: samples one optimizer step consumes (all data-parallel ranks together)
    samples_per_step: int = 0
    #: tokens one optimizer step trains on, for throughput and MFU
    tokens_per_step: int = 0

    def num_micro_batches(self, step: int) -> int:
        raise NotImplementedError

    def iterator(self, state):
        """The data iterator for the step about to run (``state.step`` done so far); a list of
        iterators, one per model chunk, under the interleaved pipeline schedule."""
        raise NotImplementedError

    def announce(self, step: int) -> Optional[str]:
        """A line to print before step index ``step`` runs (e.g. a data-phase switch)."""
        return None

    def record(self, step: int) -> dict:
        """Extra fields for the metrics record of step ``step`` (1-based)."""
        return {}
