"""Router statistics of MoE models for the training log: per-expert load and the auxiliary losses.

Megatron-Core's routers record their auxiliary losses (``load_balancing_loss``,
``seq_load_balancing_loss``, ``global_load_balancing_loss``, ``z_loss``) per layer in its
layer-wise tracker; :func:`megatron.core.transformer.moe.moe_utils.track_moe_metrics` reduces
them over pipeline stages and data-parallel ranks, as Megatron-LM's training log does. The routing
decisions themselves are not kept, so :class:`RouterStats` hooks each ``TopKRouter``'s forward
and counts the tokens each expert receives (``routing_map`` after capacity dropping).

Logged every ``log_every`` steps:
- ``moe/<aux loss name>``: of the logged step, mean over MoE layers, without its coefficient
  (Megatron's convention);
- ``moe/expert_load`` (over the steps since the last record): fraction of routed token slots per expert, averaged over MoE layers
  (uniform routing gives 1/E each);
- ``moe/load_max_over_mean``: the busiest expert's load over the mean, worst layer (1.0 is perfect).

Token counts are summed over every rank that routes distinct tokens: data-parallel and
context-parallel ranks, and tensor-parallel ranks when sequence parallelism splits the tokens.
"""

from __future__ import annotations

from typing import Dict, List

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.transformer.moe import moe_utils
from megatron.core.transformer.moe.router import TopKRouter


class RouterStats:
    def __init__(self, model_chunks, num_layers: int, num_experts: int, num_micro_batches: int,
                 sequence_parallel: bool):
        self.num_layers = num_layers
        self.num_experts = num_experts
        self.num_micro = num_micro_batches
        self.sequence_parallel = sequence_parallel
        self.counts = torch.zeros(num_layers, num_experts, dtype=torch.float64)
        self._handles = []
        self._local_layers = []
        for chunk in model_chunks:
            for module in chunk.modules():
                if isinstance(module, TopKRouter):
                    self._local_layers.append(module.layer_number - 1)  # global, numbered from 1
                    self._handles.append(module.register_forward_hook(self._hook))
        self._all_layers = None

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def _hook(self, router, inputs, outputs):
        if not router.training:
            return
        _, routing_map = outputs
        self.counts[router.layer_number - 1] += routing_map.detach().sum(dim=0).to("cpu", torch.float64)

    def skip_log(self) -> None:
        """A step that is not logged: drop Megatron's per-step aux-loss values (local, no collective)."""
        moe_utils.clear_aux_losses_tracker()

    def collect(self) -> Dict[str, object]:
        """Reduce over ranks (a collective: every rank calls it at the same step) and reset."""
        losses: Dict[str, torch.Tensor] = {}
        moe_layers = self._global_moe_layers()
        # Megatron's reduction over PP and DP; loss_scale 1/num_micro as Megatron-LM's training log.
        moe_utils.track_moe_metrics(loss_scale=1.0 / self.num_micro, iteration=0, total_loss_dict=losses,
                                    num_layers=self.num_layers,
                                    moe_layer_freq=[int(i in moe_layers) for i in range(self.num_layers)])
        record: Dict[str, object] = {f"moe/{k}": float(v) for k, v in losses.items()}
        counts = self.counts.clone()
        if dist.is_initialized():
            dist.all_reduce(counts)
            if not self.sequence_parallel:
                counts /= parallel_state.get_tensor_model_parallel_world_size()
        layers = [i for i in range(self.num_layers) if counts[i].sum() > 0]
        if layers:
            per_layer = counts[layers] / counts[layers].sum(dim=1, keepdim=True)
            record["moe/expert_load"] = [round(float(x), 5) for x in per_layer.mean(dim=0)]
            record["moe/load_max_over_mean"] = float((per_layer.max(dim=1).values * self.num_experts).max())
        self.counts.zero_()
        return record

    def _global_moe_layers(self) -> List[int]:
        """MoE layer indices over all pipeline stages (agreed through one all-reduce, cached)."""
        if self._all_layers is None:
            mask = torch.zeros(self.num_layers, dtype=torch.float64)
            mask[self._local_layers] = 1
            if dist.is_initialized():
                dist.all_reduce(mask, op=dist.ReduceOp.MAX)
            self._all_layers = [i for i in range(self.num_layers) if mask[i] > 0]
        return self._all_layers

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
