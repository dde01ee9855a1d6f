"""Reward shaping and batch filtering around the advantage: DAPO's soft overlong penalty and dynamic
sampling's test for groups that carry a learning signal.

Left out: regenerating dropped groups (:mod:`nemo_reason.rl.groups`) and filtering truncated samples out of
the loss (the ``grpo`` step's ``overlong_filter`` zeroes their loss mask).
"""

from __future__ import annotations

import torch


def overlong_soft_penalty(lengths: torch.Tensor, max_len: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment, added to the reward: ``lengths [N]`` (response tokens) -> ``[N]``.

    With ``L_exp = max_len - buffer``: ``0`` for ``L <= L_exp``; ``(L_exp - L) / buffer * factor`` (from 0
    down to ``-factor``) for ``L_exp < L <= max_len``; ``-factor`` for ``L > max_len``.
    """
    if not 0 < buffer <= max_len:
        raise ValueError(f"overlong_soft_penalty: buffer must be in (0, max_len={max_len}], got {buffer}; it is "
                         f"the number of tokens before max_len over which the penalty grows")
    length = torch.as_tensor(lengths).to(torch.float32)
    expected = max_len - buffer
    ramp = (expected - length) / buffer * factor
    out = torch.where(length <= expected, torch.zeros_like(length), ramp)
    return torch.where(length > max_len, torch.full_like(length, -factor), out)


def dynamic_sampling_keep(rewards: torch.Tensor) -> torch.Tensor:
    """DAPO's dynamic sampling filter: ``rewards [num_groups, group_size]`` -> bool ``[num_groups]``, True
    where a group's rewards are not all equal (a group of equal rewards has zero group-relative advantage,
    hence no gradient, and only dilutes the batch)."""
    r = torch.as_tensor(rewards)
    if r.dim() != 2:
        raise ValueError(f"dynamic_sampling_keep: rewards must be [num_groups, group_size], got shape "
                         f"{tuple(r.shape)}; reshape flat rewards with .view(-1, group_size)")
    return r.amax(dim=1) != r.amin(dim=1)


__all__ = ["overlong_soft_penalty", "dynamic_sampling_keep"]
