"""Megatron's tensor-parallel linears with a direct forward when no gradient is recorded.

Megatron-Core's ``ColumnParallelLinear``/``RowParallelLinear`` run every forward through
``torch.autograd.Function`` wrappers (``LinearWithGradAccumulationAndAsyncCommunication`` for the
matmul, ``_CopyToModelParallelRegion``/``_ReduceFromModelParallelRegion``/
``_GatherFromModelParallelRegion`` for the collectives), and ``RowParallelLinear`` hands
``tp_group=None`` to the matmul wrapper, which looks the group up and issues a deprecation warning
on every call. Under ``torch.inference_mode``/``no_grad`` (rollout, evaluation) none of that
bookkeeping does anything, but on the CPU, at decode sizes, it costs as much as the matmul itself.

:class:`PortableColumnParallelLinear` and :class:`PortableRowParallelLinear` are those classes,
unchanged (constructor, parameters, state-dict keys, sharding, training forward: ``super()``), with
one addition: when ``torch.is_grad_enabled()`` is false and the layer has no sequence-parallel,
offloading or deferred-wgrad duty, ``forward`` computes the same ops the wrappers compute in their
forward (``torch.matmul(x, w.t())``, ``+ bias``) and the same collectives on the group held since
construction (all-reduce for a row-parallel output, all-gather along the last dimension for a
gathered column-parallel output, nothing for expert layers with explicit communication). The
values are those of the training path, bit for bit (tests/unit/test_rollout_fast_path.py).

Left out: the sequence-parallel all-gather / reduce-scatter and a scattered row-parallel input
(``input_is_parallel=False``) take Megatron's forward (generation switches sequence parallelism
off, see :mod:`nemo_reason.rollout.sampler`).
"""

from __future__ import annotations

import torch
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.tensor_parallel.mappings import _gather_along_last_dim, _reduce


def _no_grad_eligible(layer) -> bool:
    cfg = layer.config
    return (not torch.is_grad_enabled() and cfg._cpu_offloading_context is None
            and not cfg.defer_embedding_wgrad_compute)


class PortableColumnParallelLinear(ColumnParallelLinear):
    """``ColumnParallelLinear`` with a wrapper-free forward when no gradient is recorded."""

    def forward(self, input_, weight=None, runtime_gather_output=None):
        if weight is not None or self.weight is None or not _no_grad_eligible(self) or (
                self.sequence_parallel and not self.explicit_expert_comm):
            return super().forward(input_, weight, runtime_gather_output)
        output = torch.matmul(input_, self.weight.t())
        if self.bias is not None and not self.skip_bias_add:
            output = output + self.bias
        gather = self.gather_output if runtime_gather_output is None else runtime_gather_output
        if gather and self.tp_group is not None:
            output = _gather_along_last_dim(output, self.tp_group)
        return output, (self.bias if self.skip_bias_add else None)


class PortableRowParallelLinear(RowParallelLinear):
    """``RowParallelLinear`` with a wrapper-free forward when no gradient is recorded."""

    def forward(self, input_):
        if not _no_grad_eligible(self) or not self.input_is_parallel or (
                self.sequence_parallel and not self.explicit_expert_comm):
            return super().forward(input_)
        output = torch.matmul(input_, self.weight.t())
        if not self.explicit_expert_comm and self.tp_group is not None:
            output = _reduce(output, self.tp_group)
        if self.skip_bias_add:
            return output, self.bias
        return (output + self.bias) if self.bias is not None else output, None
