"""Hybrid Mamba-Transformer (Nemotron-H) from Megatron-Core's ``MambaModel`` and ``MambaStack``.

The layer pattern (``model.hybrid_pattern``, Megatron's ``hybrid_override_pattern``) or the ratios
(``hybrid_attention_ratio`` / ``hybrid_mlp_ratio``) go straight to ``MambaModel``; Megatron's
``MambaStack`` allocates the layers and splits them over pipeline stages. The decoder spec comes
from the backend (:func:`nemo_reason.backend.specs.hybrid_stack_spec`): Megatron's TE spec with its
``MambaMixer`` on CUDA + mamba-ssm, the local spec with the portable mixer elsewhere; this module
never branches on the device. ``TransformerConfig`` is the dense one
(:func:`nemo_reason.models.gpt.transformer_config`) plus the Mamba fields.

The model's forward is ``MambaModel.forward(tokens, position_ids, attention_mask, labels=...)``,
the same call the training loop makes for GPT; generation passes Megatron's
``StaticInferenceContext`` (see :mod:`nemo_reason.rollout.state`).

MoE layers (``E`` in the pattern) are Megatron's ``MoELayer`` with the ``model.moe_*`` settings.
Left out: interleaved pipelines (``MambaStack`` has none), refused at config validation.
"""

from __future__ import annotations

from typing import List

from megatron.core.models.mamba import MambaModel

from nemo_reason.backend import cuda_available, select
from nemo_reason.backend.specs import hybrid_stack_spec
from nemo_reason.config.schema import RunConfig
from nemo_reason.models.vocab import padded_vocab_size
from nemo_reason.models.gpt import transformer_config
from nemo_reason.models.pattern import allocate


def hybrid_transformer_config(cfg: RunConfig, backend: str, dims=None):
    m = cfg.model
    return transformer_config(
        cfg, backend, dims,
        is_hybrid_model=True,
        mamba_state_dim=m.mamba_state_dim,
        mamba_head_dim=m.mamba_head_dim,
        mamba_num_groups=m.mamba_num_groups,
        mamba_num_heads=m.mamba_num_heads,
    )


def layer_types(cfg: RunConfig) -> List[str]:
    """The full stack's layer symbols (all pipeline stages), as Megatron will allocate them."""
    m = cfg.model
    return allocate(m.num_layers, m.hybrid_attention_ratio, m.hybrid_mlp_ratio, m.hybrid_pattern)


def build_model(cfg: RunConfig, vocab_size: int, dims=None) -> List[MambaModel]:
    """This rank's model (a list of one chunk: Megatron's ``MambaStack`` has no virtual stages)."""
    from megatron.core import parallel_state

    backend = select(cfg.model.backend)
    m = cfg.model
    tcfg = hybrid_transformer_config(cfg, backend, dims)
    tp = (dims if dims is not None else cfg.parallel).tp
    model = MambaModel(
        config=tcfg,
        mamba_stack_spec=hybrid_stack_spec(backend, chunk_size=m.mamba_chunk_size),
        vocab_size=padded_vocab_size(vocab_size, m.make_vocab_size_divisible_by, tp),
        max_sequence_length=m.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        hybrid_attention_ratio=m.hybrid_attention_ratio,
        hybrid_mlp_ratio=m.hybrid_mlp_ratio,
        hybrid_override_pattern=m.hybrid_pattern,
        share_embeddings_and_output_weights=not m.untie_embeddings_and_output_weights,
        position_embedding_type=m.position_embedding_type,
        rotary_percent=m.rotary_percent,
        rotary_base=m.rotary_base,
    )
    if cuda_available():
        from nemo_reason.backend.dist import device_for, read_env

        model.to(device_for(read_env().local_rank))
    return [model]
