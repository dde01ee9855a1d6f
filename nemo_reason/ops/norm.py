"""Gated, group-wise RMSNorm in plain PyTorch, as mamba-ssm's `layernorm_gated.RMSNorm` / `rmsnorm_fn`.

Mamba-2 normalises the scan output y, gated by z, in groups of `group_size` channels (one group per B/C
group, so that the result does not depend on how tensor parallelism splits the heads):

    norm_before_gate=True:  out = rmsnorm_groups(y) * weight (+ bias) * silu(z)
    norm_before_gate=False: out = rmsnorm_groups(y * silu(z)) * weight (+ bias)

where rmsnorm_groups(v) = v / sqrt(mean(v^2 over each group) + eps). group_size=None means one group of the
whole last dimension. Math runs in float32 (or wider); out comes back in x's dtype.

`RMSNormGated` is the module Megatron's MambaMixer builds (it subclasses it for sharded state dicts): one
`weight` parameter (the state-dict key mamba-ssm uses), no bias, forward(x, z=None).
Left out: mamba-ssm's fused kernels and the non-RMS `LayerNorm` variant, which Mamba-2 does not use.

Shapes: x and z (..., hidden_size), weight and bias (hidden_size,).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def rmsnorm_fn(x, weight, bias=None, z=None, eps=1e-6, group_size=None, norm_before_gate=True):
    """Gated group RMSNorm of x over its last dimension; see the module docstring."""
    hidden = x.shape[-1]
    group_size = hidden if group_size is None else group_size
    if hidden % group_size:
        raise ValueError(f"hidden size {hidden} is not a multiple of group_size {group_size}")
    f = torch.promote_types(x.dtype, torch.float32)
    v = x.to(f)
    gate = None if z is None else F.silu(z.to(f))
    if gate is not None and not norm_before_gate:
        v = v * gate
    groups = v.unflatten(-1, (hidden // group_size, group_size))                    # (..., ngroups, group_size)
    out = (groups * torch.rsqrt(groups.square().mean(dim=-1, keepdim=True) + eps)).flatten(-2)
    out = out * weight.to(f)
    if bias is not None:
        out = out + bias.to(f)
    if gate is not None and norm_before_gate:
        out = out * gate
    return out.to(x.dtype)


class RMSNormGated(nn.Module):
    """RMSNorm over groups of `group_size` channels, gated by silu(z); state dict: {"weight"}."""

    def __init__(self, hidden_size, eps=1e-5, group_size=None, norm_before_gate=True, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.ones_(self.weight)

    def forward(self, x, z=None):
        return rmsnorm_fn(x, self.weight, self.bias, z=z, eps=self.eps, group_size=self.group_size,
                          norm_before_gate=self.norm_before_gate)

    def extra_repr(self):
        return (f"{self.weight.shape[0]}, eps={self.eps}, group_size={self.group_size}, "
                f"norm_before_gate={self.norm_before_gate}")
