"""Tensor-parallel layout of the Mamba-2 mixer, as Megatron-Core's ``MambaMixer`` defines it.

Megatron splits a mixer across TP ranks by *heads* and *B/C groups*: rank ``r`` of ``tp`` holds
heads ``[r*H/tp, (r+1)*H/tp)`` and groups ``[r*G/tp, (r+1)*G/tp)``. Each fused tensor is a stack
of sections, and every section is split on its own:

    in_proj.weight  [z | x | B | C | dt] rows   sizes  d_inner, d_inner, G*N, G*N, H
    conv1d.weight   [x | B | C]         rows   sizes  d_inner, G*N, G*N        (and conv1d.bias)
    dt_bias, A_log, D [H]; norm.weight [d_inner]; out_proj.weight columns [d_inner]

so a rank's local ``in_proj`` rows are ``[z_r | x_r | B_r | C_r | dt_r]``, not a contiguous block of
the global weight. Checkpoints store each section as its own global tensor
(``in_proj.weight.z``, ..., ``conv1d.weight.B``, ...; ``mamba_mixer.py`` ``sharded_state_dict``
and ``_split_tensor_factory``), which is what lets a checkpoint move between TP sizes and between
Megatron's mixer and the portable one. :func:`split_factory` builds those entries.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Sequence

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory


class MambaLayoutError(ValueError):
    """The Mamba dimensions cannot be split across the tensor-parallel ranks."""


@dataclass(frozen=True)
class MambaDims:
    d_model: int
    d_inner: int   # H * P
    nheads: int    # H
    headdim: int   # P
    ngroups: int   # G
    d_state: int   # N
    d_conv: int
    tp: int

    @classmethod
    def build(cls, *, d_model: int, d_state: int, headdim: int, ngroups: int, nheads: Optional[int],
              expand: int = 2, d_conv: int = 4, tp: int = 1) -> "MambaDims":
        """Validate like Megatron's ``MambaMixer.__init__`` does, with messages that name the fix."""
        for name, v in (("mamba_state_dim", d_state), ("mamba_head_dim", headdim), ("mamba_num_groups", ngroups)):
            if v is None or v <= 0:
                raise MambaLayoutError(f"{name}={v} must be positive")
        if nheads is None:
            if (expand * d_model) % headdim:
                raise MambaLayoutError(f"d_inner = {expand} x hidden_size = {expand * d_model} is not divisible "
                                       f"by mamba_head_dim={headdim}; set mamba_num_heads")
            nheads = expand * d_model // headdim
        if ngroups % tp:
            raise MambaLayoutError(f"mamba_num_groups={ngroups} is not divisible by tensor-parallel size {tp}: "
                                   "each rank must hold whole B/C groups")
        if nheads % tp:
            raise MambaLayoutError(f"Mamba heads ({nheads}) are not divisible by tensor-parallel size {tp}")
        if nheads % ngroups:
            raise MambaLayoutError(f"Mamba heads ({nheads}) are not divisible by mamba_num_groups={ngroups}")
        return cls(d_model, nheads * headdim, nheads, headdim, ngroups, d_state, d_conv, tp)

    # -- per-rank sizes --
    @property
    def nheads_local(self) -> int:
        return self.nheads // self.tp

    @property
    def d_inner_local(self) -> int:
        return self.d_inner // self.tp

    @property
    def ngroups_local(self) -> int:
        return self.ngroups // self.tp

    def in_proj_sections(self, local: bool = True) -> List[int]:
        """Row counts of z, x, B, C, dt."""
        k = self.tp if local else 1
        gn = self.ngroups * self.d_state // k
        return [self.d_inner // k, self.d_inner // k, gn, gn, self.nheads // k]

    def conv_sections(self, local: bool = True) -> List[int]:
        """Channel counts of x, B, C (the causally convolved part of the in_proj output)."""
        return self.in_proj_sections(local)[1:4]

    def rank_rows(self, global_sections: Sequence[int], rank: int) -> torch.Tensor:
        """Indices of the global rows (stacked sections) that rank ``rank`` holds, in local order."""
        rows, start = [], 0
        for size in global_sections:
            part = size // self.tp
            rows.append(torch.arange(start + rank * part, start + (rank + 1) * part))
            start += size
        return torch.cat(rows)


IN_PROJ_NAMES = ["z", "x", "B", "C", "dt"]
CONV_NAMES = ["x", "B", "C"]


def split_factory(sh_ten: ShardedTensor, sections: List[int], names: List[str], dim: int = 0) -> ShardedTensorFactory:
    """Save one TP-sharded fused tensor as several sharded tensors, ``<key>.<name>`` per section.

    Same keys and shapes as Megatron's ``mamba_mixer._split_tensor_factory``: each section is a
    narrow of the local shard, so its global shape is ``section x tp`` along ``dim``. Loading
    concatenates the sections back in order.
    """
    if sum(sections) != sh_ten.local_shape[dim]:
        raise ValueError(f"sections {sections} do not cover dimension {dim} of {sh_ten.key} "
                         f"({sh_ten.local_shape[dim]})")
    template = sh_ten.without_data()

    @torch.no_grad()
    def build(key, t, replica_id, flattened_range):
        whole = replace(template, key=key, data=t, dtype=t.dtype, replica_id=replica_id,
                        flattened_range=flattened_range)
        parts, start = [], 0
        for size, name in zip(sections, names):
            for piece in whole.narrow(dim, start, size):
                piece.key = f"{piece.key}.{name}"
                parts.append(piece)
            start += size
        return parts

    @torch.no_grad()
    def merge(sub_state_dict):
        return torch.cat(sub_state_dict, dim=dim)

    return ShardedTensorFactory(sh_ten.key, sh_ten.data, build, merge, sh_ten.replica_id)
