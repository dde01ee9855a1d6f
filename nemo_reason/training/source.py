"""What a training step's batches come from: the interface :func:`nemo_reason.training.loop.run_loop`
reads. Imports nothing (step modules subclass it at import time and stay light).

A source whose position is not a function of the step index alone (GRPO: a prompt stream consumed at
a variable rate, a rollout shared by several optimizer steps) returns it from :meth:`state_dict`;
``run_loop`` saves it per rank with each checkpoint and hands it back on resume."""

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

    def progress(self, record: dict) -> Optional[str]:
        """An extra progress line for a logged ``record`` (rank 0, when ``trainer.progress``)."""
        return None

    def state_dict(self) -> dict:
        """This rank's position in its stream, saved with every checkpoint (``{}``: nothing to save,
        as for sources that are a pure function of the step index)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a :meth:`state_dict` read back from the checkpoint the run resumes from."""
