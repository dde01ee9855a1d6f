"""``ParallelDims``: the parallel layout of a run, and the only place ``parallel_state`` is built.

Sizes come from ``cfg.parallel``; the data-parallel size is derived from the world size:
``dp = world / (tp * pp * cp)``. Megatron's order ``tp-cp-ep-dp-pp`` is used, so tensor-parallel
peers are adjacent ranks (the fast links inside a node).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.distributed as dist
from megatron.core import parallel_state

from nemo_reason.config.schema import ConfigError, ParallelConfig


@dataclass
class ParallelDims:
    tp: int
    pp: int
    cp: int
    ep: int
    etp: Optional[int]
    vpp: Optional[int]
    world_size: int
    sequence_parallel: bool = False

    @classmethod
    def from_config(cls, p: ParallelConfig, world_size: int) -> "ParallelDims":
        dims = cls(p.tp, p.pp, p.cp, p.ep, p.etp, p.vpp, world_size, p.sequence_parallel)
        dims.validate()
        return dims

    @property
    def dp(self) -> int:
        return self.world_size // (self.tp * self.pp * self.cp)

    def validate(self) -> None:
        mp = self.tp * self.pp * self.cp
        if self.world_size % mp:
            raise ConfigError(
                f"world size {self.world_size} is not divisible by tp x pp x cp = {mp}"
            )

    def init(self, timeout_minutes: int = 30) -> None:
        """Initialise Megatron's parallel_state for this layout (torch.distributed must be up)."""
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised; call backend.dist.init_process_group first")
        if dist.get_world_size() != self.world_size:
            raise ConfigError(
                f"the launcher started {dist.get_world_size()} ranks but the config expects "
                f"{self.world_size} (launcher.nodes x launcher.nproc_per_node)"
            )
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=self.tp,
            pipeline_model_parallel_size=self.pp,
            virtual_pipeline_model_parallel_size=self.vpp,
            context_parallel_size=self.cp,
            expert_model_parallel_size=self.ep,
            expert_tensor_parallel_size=self.etp,
            distributed_timeout_minutes=timeout_minutes,
        )

    @staticmethod
    def destroy() -> None:
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()

    # Ranks of this process inside each group (valid after init()).
    @property
    def dp_rank(self) -> int:
        return parallel_state.get_data_parallel_rank()

    @property
    def tp_rank(self) -> int:
        return parallel_state.get_tensor_model_parallel_rank()

    @property
    def pp_rank(self) -> int:
        return parallel_state.get_pipeline_model_parallel_rank()

    def describe(self) -> str:
        parts = [f"tp={self.tp}", f"pp={self.pp}"]
        if self.vpp:
            parts.append(f"vpp={self.vpp}")
        parts += [f"cp={self.cp}", f"ep={self.ep}", f"dp={self.dp}"]
        return " ".join(parts) + f" (world {self.world_size})"
