"""Megatron-Core layer specs for the selected backend.

- ``te``: Megatron's Transformer Engine spec (fused layernorm-linear, TE core attention, fp8).
- ``local``: Megatron's local spec (its own ColumnParallel/RowParallel linears, torch norms) with
  the one module that needs CUDA-only code swapped through the spec: core attention becomes
  :class:`~nemo_reason.backend.portable.attention.SDPACoreAttention`.

Both specs give the same parameter names for the attention and MLP projections, so the model
code never branches on the backend.

The local specs (GPT and hybrid) also hold Megatron's ``ColumnParallelLinear``/``RowParallelLinear``
and ``SelfAttention`` as their portable subclasses (:mod:`.portable.linear`,
:mod:`.portable.self_attention`): identical modules and training forward, plus a direct forward
when no gradient is recorded and RoPE from cached tables when decoding with a KV cache, which is
what makes CPU rollout keep pace with Hugging Face ``generate`` (docs/benchmarks.md). The model's
output layer is built by ``GPTModel``/``MambaModel`` themselves, not from a spec, and keeps
Megatron's class.

Hybrid (Mamba) stacks, :func:`hybrid_stack_spec`:

- ``te``: Megatron's ``mamba_stack_spec`` (TE linears with fused norms, TE attention, ``TENorm``);
  its mixer is Megatron's ``MambaMixer`` where mamba-ssm and causal-conv1d import, else the
  portable mixer (same parameters) inside the same TE linears.
- ``local``: Megatron's ``MambaStack``/``MambaLayer``/``TransformerLayer``/``MLPLayer`` with its
  ColumnParallel/RowParallel linears, torch norms, SDPA core attention, the portable mixer, and a
  stack whose final norm is not ``TENorm`` (:mod:`.portable.mamba_stack`). The layers map their
  separate norms onto TE's fused names in checkpoints (``norm.`` -> ``mixer.in_proj.layer_norm_``,
  ...), as Megatron's local GPT spec does, so checkpoints move between the two backends.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from megatron.core.transformer.spec_utils import ModuleSpec


def gpt_layer_spec(backend: str, config=None, *, normalization: str, qk_layernorm: bool = False,
                   vp_stage=None):
    """The decoder spec of a ``GPTModel``.

    te: Megatron's TE layer spec, or with experts its decoder block spec (MoE layers every
    ``moe_layer_freq`` layers). local: Megatron's decoder block spec of this pipeline stage with
    the portable core attention and norms (so sequence parallelism works without apex).
    """
    if backend not in ("te", "local"):
        raise ValueError(f"backend must be 'te' or 'local', got {backend!r}")
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec

    if backend == "te":
        if config is not None and config.num_moe_experts:
            return get_gpt_decoder_block_spec(config, use_transformer_engine=True, normalization=normalization,
                                              vp_stage=vp_stage)
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk_layernorm)
    block = get_gpt_decoder_block_spec(config, use_transformer_engine=False, normalization=normalization,
                                       vp_stage=vp_stage)
    block.layer_specs = [_portable_layer(s) for s in block.layer_specs]
    block.layer_norm = _portable_norm(block.layer_norm)
    return block


def _portable_norm(norm):
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    from nemo_reason.backend.portable.norm import PortableNorm

    return PortableNorm if norm is WrappedTorchNorm else norm


def _portable_layer(layer_spec: ModuleSpec) -> ModuleSpec:
    """Megatron's local layer spec with core attention swapped for the SDPA one and torch norms for
    the sequence-parallel-capable portable norm."""
    from nemo_reason.backend.portable.attention import SDPACoreAttention

    spec = _inference_fast_modules(copy.deepcopy(layer_spec))
    sub = spec.submodules
    sub.self_attention.submodules.core_attention = SDPACoreAttention
    sub.input_layernorm = _portable_norm(sub.input_layernorm)
    sub.pre_mlp_layernorm = _portable_norm(sub.pre_mlp_layernorm)
    att = sub.self_attention.submodules
    att.q_layernorm = _portable_norm(att.q_layernorm)
    att.k_layernorm = _portable_norm(att.k_layernorm)
    return spec


def _inference_fast_modules(spec):
    """``spec`` (in place) with Megatron's tensor-parallel linears and self-attention replaced, at
    every depth, by their portable subclasses: the same modules, parameters and training forward,
    with a direct forward when no gradient is recorded or a KV cache is used (rollout, evaluation;
    see :mod:`.portable.linear`, :mod:`.portable.self_attention`)."""
    from dataclasses import fields, is_dataclass

    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.attention import SelfAttention

    from nemo_reason.backend.portable.linear import PortableColumnParallelLinear, PortableRowParallelLinear
    from nemo_reason.backend.portable.self_attention import PortableSelfAttention

    swap = {ColumnParallelLinear: PortableColumnParallelLinear, RowParallelLinear: PortableRowParallelLinear,
            SelfAttention: PortableSelfAttention}

    def visit(node):
        if isinstance(node, type):
            return swap.get(node, node)
        if isinstance(node, ModuleSpec):
            node.module = swap.get(node.module, node.module)
            if node.submodules is not None:
                node.submodules = visit(node.submodules)
            return node
        if is_dataclass(node) and not isinstance(node, type):
            for f in fields(node):
                setattr(node, f.name, visit(getattr(node, f.name)))
        return node

    return visit(spec)


def hybrid_stack_spec(backend: str, *, chunk_size: int = 128) -> ModuleSpec:
    """Spec of the decoder of Megatron's ``MambaModel`` for this backend."""
    from nemo_reason.backend import mamba_kernels_importable
    from nemo_reason.backend.portable.mamba_mixer import PortableMambaMixer

    if backend == "te":
        from megatron.core.models.mamba.mamba_layer_specs import mamba_stack_spec

        # Copy only the path to the mixer (Megatron's spec holds objects deepcopy cannot copy).
        layer = mamba_stack_spec.submodules.mamba_layer
        mixer = layer.submodules.mixer
        mixer = replace(mixer, module=mixer.module if mamba_kernels_importable() else PortableMambaMixer,
                        params={**(mixer.params or {}), "chunk_size": chunk_size})
        layer = replace(layer, submodules=replace(layer.submodules, mixer=mixer))
        return replace(mamba_stack_spec, submodules=replace(mamba_stack_spec.submodules, mamba_layer=layer))
    if backend != "local":
        raise ValueError(f"backend must be 'te' or 'local', got {backend!r}")
    return _local_hybrid_stack_spec(PortableMambaMixer, chunk_size)


def _local_hybrid_stack_spec(mixer_cls, chunk_size: int) -> ModuleSpec:
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
    from megatron.core.ssm.mamba_block import MambaStackSubmodules
    from megatron.core.ssm.mamba_layer import MambaLayer, MambaLayerSubmodules
    from megatron.core.ssm.mlp_layer import MLPLayer
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.mlp import MLP, MLPSubmodules
    from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

    from nemo_reason.backend.portable.attention import SDPACoreAttention
    from nemo_reason.backend.portable.mamba_mixer import MambaMixerSubmodules
    from nemo_reason.backend.portable.norm import PortableNorm
    from nemo_reason.backend.portable.mamba_stack import MambaStack

    mamba_layer = ModuleSpec(
        module=MambaLayer,
        submodules=MambaLayerSubmodules(
            norm=PortableNorm,
            mixer=ModuleSpec(module=mixer_cls, params={"chunk_size": chunk_size},
                             submodules=MambaMixerSubmodules(in_proj=ColumnParallelLinear,
                                                             out_proj=RowParallelLinear)),
            mamba_bda=get_bias_dropout_add,
            sharded_state_dict_keys_map={"norm.": "mixer.in_proj.layer_norm_"},
        ),
    )
    attention_layer = ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=PortableNorm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(linear_qkv=ColumnParallelLinear, core_attention=SDPACoreAttention,
                                                   linear_proj=RowParallelLinear),
            ),
            self_attn_bda=get_bias_dropout_add,
            sharded_state_dict_keys_map={"input_layernorm.": "self_attention.linear_qkv.layer_norm_"},
        ),
    )
    mlp_layer = _pre_norm_mlp_layer(MLPLayer, ModuleSpec(module=MLP, submodules=MLPSubmodules(
        linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear)))
    from megatron.core.models.gpt.moe_module_specs import get_moe_module_spec

    # E layers: Megatron's MoE layer (local experts: SequentialMLP; router and dispatchers are
    # Megatron's), in a pre-norm transformer layer as Megatron's mamba_stack_spec has it.
    # (num_experts is a placeholder, as in Megatron's mamba_stack_spec: MoELayer reads the config.)
    moe_layer = _pre_norm_mlp_layer(TransformerLayer,
                                    get_moe_module_spec(use_te=False, num_experts=8, moe_grouped_gemm=False))
    return _inference_fast_modules(ModuleSpec(
        module=MambaStack,
        params={"final_norm": PortableNorm},
        submodules=MambaStackSubmodules(mamba_layer=mamba_layer, attention_layer=attention_layer,
                                        mlp_layer=mlp_layer, moe_layer=moe_layer),
    ))


def _pre_norm_mlp_layer(layer_cls, mlp: ModuleSpec) -> ModuleSpec:
    """A pre-norm layer holding only an MLP (``-``) or an MoE (``E``) block, with the norm mapped onto
    TE's fused name in checkpoints."""
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
    from megatron.core.transformer.transformer_layer import TransformerLayerSubmodules

    from nemo_reason.backend.portable.norm import PortableNorm

    return ModuleSpec(
        module=layer_cls,
        submodules=TransformerLayerSubmodules(
            pre_mlp_layernorm=PortableNorm,
            mlp=mlp,
            mlp_bda=get_bias_dropout_add,
            sharded_state_dict_keys_map={"pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"},
        ),
    )
