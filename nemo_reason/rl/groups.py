"""Dynamic sampling with refill (DAPO): which prompt groups a GRPO batch trains on.

A *group* is one prompt's ``group_size`` samples with their (shaped) rewards. A group whose rewards
are all equal has zero group-relative advantage: no signal. :func:`collect_groups` keeps the groups
with signal from the first round and, while fewer than ``want`` are kept, asks for fresh prompts
(``refill``) up to ``max_refills`` more rounds. If still short, the batch is filled with the last
dropped groups at zero weight, so every rank and every step run the same number of sequences.

Data parallelism: ``agree(need)`` turns this rank's shortfall into the one all ranks share (the
maximum over the data-parallel group); every rank then takes that many prompts from its stream (so
the streams stay in step) and generates only the ones it lacks. ``refill(take, use, round)`` takes
``take`` prompts and returns the groups of the first ``use`` of them.

Pure control flow: no tensors beyond each group's ``rewards`` ``[group_size]``, no collectives of its
own. Left out: oversampling a whole batch per round (verl generates a full batch again; we generate
only what is missing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import torch


def has_signal(rewards) -> bool:
    """True when a group's rewards ``[group_size]`` are not all equal."""
    r = torch.as_tensor(rewards)
    return bool(r.amax() != r.amin())


@dataclass
class GroupStats:
    generated: int = 0     # groups generated this step (all rounds)
    dropped: int = 0       # of them, without signal
    short: int = 0         # groups in the batch at zero weight (not enough with signal)
    refills: int = 0       # refill rounds run


def collect_groups(first: Sequence, refill: Callable[[int, int, int], List], want: int, *, dynamic: bool = True,
                   max_refills: int = 2, agree: Callable[[int], int] = lambda n: n) -> Tuple[list, list, GroupStats]:
    """``(groups, weights, stats)``: ``want`` groups (each has ``.rewards``) and a 1.0 / 0.0 weight each.

    Without ``dynamic`` every group of ``first`` is kept at weight 1 and nothing is refilled."""
    first = list(first)
    stats = GroupStats(generated=len(first))
    if not dynamic:
        return first[:want], [1.0] * min(want, len(first)), stats
    kept = [g for g in first if has_signal(g.rewards)]
    dropped = [g for g in first if not has_signal(g.rewards)]
    while stats.refills < max_refills:
        need = max(want - len(kept), 0)
        take = int(agree(need))
        if take == 0:
            break
        stats.refills += 1
        fresh = list(refill(take, need, stats.refills)) if take else []
        stats.generated += len(fresh)
        kept += [g for g in fresh if has_signal(g.rewards)]
        dropped += [g for g in fresh if not has_signal(g.rewards)]
    stats.dropped = len(dropped)
    out = kept[:want]
    short = want - len(out)
    stats.short = short
    filler = dropped[len(dropped) - short:] if short else []
    return out + filler, [1.0] * len(out) + [0.0] * len(filler), stats


__all__ = ["GroupStats", "collect_groups", "has_signal"]
