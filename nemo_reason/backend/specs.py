"""Megatron-Core layer specs for the selected backend.

- ``te``: Megatron's Transformer Engine spec (fused layernorm-linear, TE core attention, fp8).
- ``local``: Megatron's local spec (its own ColumnParallel/RowParallel linears, torch norms) with
  the one module that needs CUDA-only code swapped through the spec: core attention becomes
  :class:`~nemo_reason.backend.portable.attention.SDPACoreAttention`.

Both specs give the same parameter names for the attention and MLP projections, so the model
code never branches on the backend.
"""

from __future__ import annotations

import copy

from megatron.core.transformer.spec_utils import ModuleSpec


def gpt_layer_spec(backend: str, *, normalization: str, qk_layernorm: bool = False) -> ModuleSpec:
    if backend == "te":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk_layernorm)
    if backend != "local":
        raise ValueError(f"backend must be 'te' or 'local', got {backend!r}")
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from nemo_reason.backend.portable.attention import SDPACoreAttention

    spec = copy.deepcopy(get_gpt_layer_local_spec(qk_layernorm=qk_layernorm, normalization=normalization))
    spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    return spec
