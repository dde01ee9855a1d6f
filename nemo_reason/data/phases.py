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

Pure Python: no Megatron or torch import.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from fractions import Fraction
from typing import List, Optional, Sequence, Tuple


class PhaseError(ValueError):
    """The phase shares do not make a valid schedule; the message names the numbers and the fix."""


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


def _exact(x: float) -> Fraction:
    # Shares are written as decimals (0.6, 0.35): take them as the decimal the user wrote, so that
    # 0.6 x 200 is exactly 120 and not 120.00000000000001.
    return Fraction(repr(float(x)))


def phase_boundaries(shares: Sequence[float], max_steps: int, names: Optional[Sequence[str]] = None) -> List[int]:
    """Step boundaries ``[0, b1, ..., max_steps]`` for phases with these token shares (see module doc)."""
    names = list(names) if names else [f"phase{i + 1}" for i in range(len(shares))]
    if not shares:
        raise PhaseError("no phases")
    total = sum((_exact(s) for s in shares), Fraction(0))
    if any(s <= 0 for s in shares) or abs(total - 1) > Fraction(1, 10**6):
        listed = " + ".join(f"{n} {s:g}" for n, s in zip(names, shares))
        raise PhaseError(f"data.phases shares must be positive and sum to 1; they sum to {float(total):g} "
                         f"({listed}): adjust the shares")
    bounds, cum = [0], Fraction(0)
    for s in shares[:-1]:
        cum += _exact(s) / total
        bounds.append(int(cum * max_steps + Fraction(1, 2)))  # round half up
    bounds.append(max_steps)
    for i in range(len(shares)):
        if bounds[i + 1] <= bounds[i]:
            raise PhaseError(
                f"data.phases: phase '{names[i]}' (share {shares[i]:g}) gets no step of trainer.max_steps="
                f"{max_steps} (boundaries at steps {bounds}): raise its share or trainer.max_steps")
    return bounds


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
