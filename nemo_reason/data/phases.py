"""Data phases: which blend trains which optimizer steps, and a dataset view that switches between them.

A run's data is an ordered list of phases, each a blend with a share of the total training tokens
(``data.phases``; a plain ``data.blend`` or ``data.source`` is one phase with share 1). Every step
trains on one global batch of ``global_batch_size x seq_length`` tokens, so a switch can only happen
between two steps. The boundary rule:

    phase k (1-based) covers the steps with 0-based index in ``[b[k-1], b[k])``, where
    ``b[k] = round_half_up(max_steps x (share_1 + ... + share_k))`` and ``b[0] = 0``;

rounding the *cumulative* share (not each share) keeps the last boundary at ``max_steps`` and every
boundary within half a step of its exact share. In tokens the boundary is exact:
``b[k] x global_batch_size x seq_length``; a run with 200 steps of 16 x 128 tokens and shares
0.6/0.4 switches after step 120, at token 245,760. A phase that would round to no step at all is a
configuration error. The boundaries derive from ``trainer.max_steps`` (like the LR schedule), so
changing it when resuming moves them.

:class:`PhasedDataset` concatenates the phases' datasets in global sample order: global sample
``g`` of the run is sample ``g - b[k-1] x global_batch_size`` of phase k's dataset. Samplers index
it with the run's consumed-samples counter alone, so a run resumed anywhere (mid-phase or exactly at
a boundary) reads the same samples as an uninterrupted one; the switch happens inside the dataset,
so every pipeline schedule (one iterator, or one per virtual stage) sees it without knowing.

Pure Python: no Megatron or torch import. :func:`phase_boundaries` lives in
:mod:`nemo_reason.config.blends` (validation uses it) and is re-exported here.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

# The boundary rule is configuration arithmetic (validation checks every phase gets a step): it lives in config.
from nemo_reason.config.blends import PhaseError, phase_boundaries  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class PhaseSpan:
    """One phase's slice of the run: 0-based optimizer-step indices ``[start_step, end_step)``."""

    index: int  # 0-based
    name: str
    start_step: int
    end_step: int

    @property
    def steps(self) -> int:
        return self.end_step - self.start_step


def plan_phases(names: Sequence[str], shares: Sequence[float], max_steps: int) -> List[PhaseSpan]:
    b = phase_boundaries(shares, max_steps, names)
    return [PhaseSpan(i, names[i], b[i], b[i + 1]) for i in range(len(names))]


def phase_at(spans: Sequence[PhaseSpan], step_index: int) -> PhaseSpan:
    """The phase that trains the optimizer step with this 0-based index (= samples consumed before
    it // global_batch_size); the last phase past the end."""
    starts = [s.start_step for s in spans]
    return spans[max(0, bisect.bisect_right(starts, step_index) - 1)]


def switch_message(spans: Sequence[PhaseSpan], step_index: int, tokens_per_step: int) -> Optional[str]:
    """The log line for a phase switch right before step ``step_index`` runs, else None."""
    for prev, nxt in zip(spans, spans[1:]):
        if nxt.start_step == step_index:
            return (f"[nemo-reason] data phase {prev.index + 1} ({prev.name}) -> {nxt.index + 1} ({nxt.name}) "
                    f"at step {step_index} (tokens {step_index * tokens_per_step:,}): steps "
                    f"{nxt.start_step + 1}-{nxt.end_step} train on {nxt.name}")
    return None


def eval_slots(span: PhaseSpan, eval_every: int) -> Tuple[int, int]:
    """Validation slots ``[first, last)`` evaluated during this phase. The loop evaluates after
    steps ``eval_every, 2 x eval_every, ...``, evaluation ``e`` (0-based) after step
    ``(e + 1) x eval_every``, on the phase of that step; so phase k holds the evaluations
    ``b[k-1] // eval_every <= e < b[k] // eval_every``."""
    if not eval_every:
        return 0, 0
    return span.start_step // eval_every, span.end_step // eval_every


class PhasedDataset:
    """Several datasets laid end to end in one index space.

    ``segments`` is ``[(dataset, length), ...]``: indices ``[offset_k, offset_k + length_k)`` read
    ``dataset_k[0 : length_k]``. Each dataset must hold at least its length (Megatron's datasets
    are built a little longer than asked).
    """

    def __init__(self, segments: Sequence[Tuple[object, int]]):
        self.segments = [(d, int(n)) for d, n in segments if n > 0]
        self.offsets = []
        off = 0
        for d, n in self.segments:
            if len(d) < n:
                raise ValueError(f"a phase dataset has {len(d)} samples, fewer than the {n} it must provide")
            self.offsets.append(off)
            off += n
        self.length = off

    def __len__(self) -> int:
        return self.length

    def locate(self, idx: int) -> Tuple[int, int]:
        """(segment number, index inside that segment's dataset) of global index ``idx``."""
        if not 0 <= idx < self.length:
            raise IndexError(f"sample {idx} is outside the run's {self.length} samples")
        k = bisect.bisect_right(self.offsets, idx) - 1
        return k, idx - self.offsets[k]

    def __getitem__(self, idx: int):
        k, local = self.locate(int(idx))
        return self.segments[k][0][local]
