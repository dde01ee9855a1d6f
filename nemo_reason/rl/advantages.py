"""Advantage estimators for outcome rewards: one scalar reward per sample in, one advantage per sample out.

Every estimator has the signature ``fn(rewards, group_size=None, **options) -> advantages``.
``rewards`` is either ``[num_groups, group_size]`` (row ``g`` holds the ``n`` samples of prompt ``g``) or
flat ``[num_groups * group_size]`` with the samples of one prompt adjacent (then ``group_size`` is
required); the advantages have the shape of ``rewards`` and carry no gradient. Standard deviations are
unbiased (Bessel's ``n - 1``), as in verl and NeMo-RL. The policy loss broadcasts a sample's advantage
over its response tokens.

Left out: token-level rewards and returns (GAE, discounting), critics, pass@k variants.
"""

from __future__ import annotations

from typing import Optional

import torch

from nemo_reason.rl import ADVANTAGES


def _grouped(rewards: torch.Tensor, group_size: Optional[int], name: str, min_size: int = 1) -> torch.Tensor:
    """``rewards`` as ``[num_groups, group_size]`` float (a view when possible)."""
    r = torch.as_tensor(rewards).detach()
    r = r.to(torch.promote_types(r.dtype, torch.float32)) if not r.is_floating_point() else r
    if r.dim() == 2:
        if group_size is not None and group_size != r.shape[1]:
            raise ValueError(f"{name}: rewards have shape {tuple(r.shape)} but group_size={group_size}; "
                             f"pass one or the other")
        g = r
    elif r.dim() == 1:
        if group_size is None:
            raise ValueError(f"{name}: flat rewards [{r.numel()}] need group_size (samples per prompt), or "
                             f"pass them as [num_groups, group_size]")
        if group_size < 1 or r.numel() % group_size:
            raise ValueError(f"{name}: {r.numel()} rewards do not split into groups of {group_size}; the "
                             f"batch must hold group_size samples of every prompt")
        g = r.reshape(-1, group_size)
    else:
        raise ValueError(f"{name}: rewards must be [num_groups, group_size] or flat, got shape {tuple(r.shape)}")
    if g.shape[1] < min_size:
        raise ValueError(f"{name} needs at least {min_size} samples per prompt, got group_size={g.shape[1]}; "
                         f"raise group_size")
    return g


@ADVANTAGES.register("grpo", "group mean baseline, optionally divided by the group's std (GRPO / Dr.GRPO)")
def grpo_advantages(rewards: torch.Tensor, group_size: Optional[int] = None, *, norm_std: bool = True,
                    eps: float = 1e-6) -> torch.Tensor:
    """GRPO: ``A[g, i] = (r[g, i] - mean_j r[g, j]) / (std_j r[g, j] + eps)``.

    ``rewards [G, n]`` (or ``[G*n]``) -> ``A`` of the same shape. ``norm_std=False`` (Dr.GRPO) keeps
    ``A = r - mean``, which does not up-weight groups whose rewards barely differ. A group whose rewards
    are all equal gets ``A = 0`` either way. Needs ``n >= 2``.
    """
    g = _grouped(rewards, group_size, "grpo", min_size=2)
    adv = g - g.mean(dim=1, keepdim=True)
    if norm_std:
        adv = adv / (g.std(dim=1, keepdim=True) + eps)
    return adv.reshape(torch.as_tensor(rewards).shape)


@ADVANTAGES.register("rloo", "leave-one-out baseline: the mean of the other samples of the prompt")
def rloo_advantages(rewards: torch.Tensor, group_size: Optional[int] = None) -> torch.Tensor:
    """RLOO: ``A[g, i] = r[g, i] - (sum_j r[g, j] - r[g, i]) / (n - 1)``, i.e. ``n / (n - 1) * (r - mean)``.

    ``rewards [G, n]`` (or ``[G*n]``) -> ``A`` of the same shape; the baseline of a sample does not
    depend on its own reward, so the estimate is unbiased. Needs ``n >= 2``.
    """
    g = _grouped(rewards, group_size, "rloo", min_size=2)
    n = g.shape[1]
    baseline = (g.sum(dim=1, keepdim=True) - g) / (n - 1)
    return (g - baseline).reshape(torch.as_tensor(rewards).shape)


@ADVANTAGES.register("reinforce", "the reward itself, no baseline")
def reinforce_advantages(rewards: torch.Tensor, group_size: Optional[int] = None) -> torch.Tensor:
    """REINFORCE without a baseline: ``A = r`` (shape kept; ``group_size`` is only checked)."""
    r = torch.as_tensor(rewards)
    if r.dim() != 1 or group_size is not None:
        _grouped(r, group_size, "reinforce")  # shape checks only
    return r.detach().clone() if r.is_floating_point() else r.detach().float()


def _whiten(x: torch.Tensor, eps: float) -> torch.Tensor:
    flat = x.reshape(-1)
    if flat.numel() < 2:
        return x - flat.mean()
    return (x - flat.mean()) / (flat.std() + eps)


@ADVANTAGES.register("reinforce_pp", "REINFORCE++: rewards normalised over the whole batch")
def reinforce_pp_advantages(rewards: torch.Tensor, group_size: Optional[int] = None, *,
                            eps: float = 1e-6) -> torch.Tensor:
    """REINFORCE++: ``A = (r - mean_batch r) / (std_batch r + eps)`` over all ``G*n`` samples.

    ``rewards [G, n]`` or ``[N]`` -> same shape; groups play no part (``group_size`` is only checked).
    Per sample, not per token: verl whitens the token-level returns, which weights long responses more.
    """
    r = torch.as_tensor(rewards)
    if r.dim() != 1 or group_size is not None:
        _grouped(r, group_size, "reinforce_pp")  # shape checks only
    r = r.detach() if r.is_floating_point() else r.detach().float()
    return _whiten(r, eps)


@ADVANTAGES.register("reinforce_pp_baseline", "REINFORCE++ with the group mean subtracted first")
def reinforce_pp_baseline_advantages(rewards: torch.Tensor, group_size: Optional[int] = None, *,
                                     eps: float = 1e-6) -> torch.Tensor:
    """REINFORCE++-baseline: ``d[g, i] = r[g, i] - mean_j r[g, j]``, then ``A = (d - mean d) / (std d + eps)``
    over the whole batch (``mean d`` is 0, so this divides by the batch std of ``d``).

    ``rewards [G, n]`` (or ``[G*n]``) -> same shape. Needs ``n >= 2``.
    """
    g = _grouped(rewards, group_size, "reinforce_pp_baseline", min_size=2)
    return _whiten(g - g.mean(dim=1, keepdim=True), eps).reshape(torch.as_tensor(rewards).shape)


__all__ = ["grpo_advantages", "rloo_advantages", "reinforce_advantages", "reinforce_pp_advantages",
           "reinforce_pp_baseline_advantages"]
