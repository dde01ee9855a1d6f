"""Dense GPT (Nemotron-4 style) from Megatron-Core's ``GPTModel`` and layer specs.

``transformer_config`` maps our ``ModelConfig``/``ParallelConfig``/precision onto Megatron's
``TransformerConfig``; ``build_model`` returns one ``GPTModel`` per virtual pipeline stage held by
this rank (a list of one without interleaving), with pre/post-processing only on the first/last
stage, as Megatron-LM's ``get_model`` does. Published architectures are recipes
(``recipes/model/*.yaml``), not code.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig

from nemo_reason.backend import cuda_available, select
from nemo_reason.backend.fp8 import fp8_transformer_kwargs
from nemo_reason.backend.portable.activations import squared_relu
from nemo_reason.backend.specs import gpt_layer_spec
from nemo_reason.config.schema import RunConfig
from nemo_reason.models.vocab import padded_vocab_size

_ACTIVATIONS = {
    "squared_relu": (squared_relu, False),
    "relu": (F.relu, False),
    "gelu": (F.gelu, False),
    "swiglu": (F.silu, True),
}

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16}


def transformer_config(cfg: RunConfig, backend: str, dims=None, **extra) -> TransformerConfig:
    """Megatron's TransformerConfig for this run; ``extra`` adds fields other model types need.
    ``dims``: the step's resolved layout (``ParallelDims``, from the step context); without it,
    ``cfg.parallel`` (tools and tests that build a model outside a run)."""
    m, t = cfg.model, cfg.trainer
    p = dims if dims is not None else cfg.parallel
    act, gated = _ACTIVATIONS[m.activation]
    dtype = _DTYPES[t.precision]
    on_cuda = cuda_available()
    extra = {**moe_transformer_kwargs(m, backend), **fp8_transformer_kwargs(t), **_recompute_kwargs(t), **extra}
    return TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups or m.num_attention_heads,
        kv_channels=m.kv_channels,
        activation_func=act,
        gated_linear_unit=gated,
        normalization=m.normalization,
        layernorm_epsilon=m.layernorm_epsilon,
        add_bias_linear=m.add_bias_linear,
        add_qkv_bias=m.add_qkv_bias,
        qk_layernorm=m.qk_layernorm,
        layernorm_zero_centered_gamma=m.layernorm_zero_centered_gamma,
        hidden_dropout=m.hidden_dropout,
        attention_dropout=m.attention_dropout,
        init_method_std=m.init_method_std,
        tensor_model_parallel_size=p.tp,
        pipeline_model_parallel_size=p.pp,
        virtual_pipeline_model_parallel_size=p.vpp,
        context_parallel_size=p.cp,
        sequence_parallel=p.sequence_parallel,
        expert_model_parallel_size=p.ep,
        expert_tensor_parallel_size=p.etp,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=t.precision in ("bf16", "fp8"),
        fp16=t.precision == "fp16",
        # Initialise full weights on the CPU and split them: identical models for every TP size.
        use_cpu_initialization=not on_cuda,
        perform_initialization=m.perform_initialization,
        # Fusions that need CUDA kernels (apex/TE/Triton) only where they exist.
        bias_activation_fusion=False,
        bias_dropout_fusion=on_cuda and backend == "te",
        masked_softmax_fusion=on_cuda and backend == "te",
        persist_layer_norm=on_cuda and backend == "te",
        gradient_accumulation_fusion=False,
        apply_rope_fusion=False,
        cross_entropy_loss_fusion=False,
        # Frees a stage's output right after it is sent (keeping only its grad_fn); on CPU, gloo's
        # asynchronous send may still be reading the buffer, so the memory saving is CUDA-only.
        deallocate_pipeline_outputs=on_cuda,
        # Megatron-LM's defaults: the interleaved schedule overlaps its p2p sends/receives (each
        # paired in even/odd rank order); batched p2p otherwise. Batched p2p under interleaving can
        # pair a gradient with an activation when previous and next stage are the same rank (PP=2
        # on gloo), which the parity test caught.
        overlap_p2p_comm=p.vpp is not None,
        batch_p2p_comm=p.vpp is None,
        **extra,
    )


def _recompute_kwargs(t) -> dict:
    """Megatron-LM's --recompute-granularity: selective recomputes the attention core (Megatron's
    default module list); full recomputes every layer's forward, one layer per unit (uniform)."""
    if t.recompute == "selective":
        return {"recompute_granularity": "selective"}
    if t.recompute == "full":
        return {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
    return {}


# ModelConfig fields passed to TransformerConfig under the same name when the model has experts.
_MOE_FIELDS = (
    "num_moe_experts", "moe_ffn_hidden_size", "moe_router_topk", "moe_router_score_function",
    "moe_router_pre_softmax", "moe_router_topk_scaling_factor", "moe_router_load_balancing_type",
    "moe_aux_loss_coeff", "moe_z_loss_coeff", "moe_router_enable_expert_bias", "moe_router_bias_update_rate",
    "moe_shared_expert_intermediate_size", "moe_shared_expert_gate", "moe_expert_capacity_factor",
    "moe_pad_expert_input_to_capacity", "moe_token_drop_policy", "moe_token_dispatcher_type",
)


def moe_transformer_kwargs(m, backend: str) -> dict:
    """Megatron's MoE fields for ``model.*`` (empty for a dense model). Grouped-GEMM experts are
    TE's (``TEGroupedMLP``): only with the te backend; the local backend runs ``SequentialMLP``."""
    if not m.is_moe:
        return {}
    kw = {name: getattr(m, name) for name in _MOE_FIELDS}
    kw["moe_ffn_hidden_size"] = m.moe_ffn_hidden_size or m.ffn_hidden_size
    kw["moe_grouped_gemm"] = m.moe_grouped_gemm and backend == "te"
    kw["moe_layer_freq"] = m.moe_layer_freq if m.type == "moe" else 1
    # Router logits and probabilities in fp32 whatever the training precision (Megatron-LM's
    # recommendation for stable routing under bf16).
    kw["moe_router_dtype"] = "fp32"
    return kw


def build_model(cfg: RunConfig, vocab_size: int, dims=None) -> List[GPTModel]:
    """Model chunks of this rank (one per virtual pipeline stage), on this rank's device."""
    backend = select(cfg.model.backend)
    p = dims if dims is not None else cfg.parallel
    tcfg = transformer_config(cfg, backend, dims)
    padded = padded_vocab_size(vocab_size, cfg.model.make_vocab_size_divisible_by, p.tp)
    vpp = p.vpp
    chunks = []
    for vp_stage in range(vpp or 1):
        stage = vp_stage if vpp else None
        pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage)
        post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage)
        spec = gpt_layer_spec(backend, tcfg, normalization=cfg.model.normalization,
                              qk_layernorm=cfg.model.qk_layernorm, vp_stage=stage)
        model = GPTModel(
            config=tcfg,
            transformer_layer_spec=spec,
            vocab_size=padded,
            max_sequence_length=cfg.model.max_position_embeddings,
            pre_process=pre,
            post_process=post,
            share_embeddings_and_output_weights=not cfg.model.untie_embeddings_and_output_weights,
            position_embedding_type=cfg.model.position_embedding_type,
            rotary_percent=cfg.model.rotary_percent,
            rotary_base=cfg.model.rotary_base,
            vp_stage=stage,
        )
        model.model_type = getattr(model, "model_type", None) or _encoder_or_decoder()
        chunks.append(model)
    if cuda_available():
        for c in chunks:
            c.to(_device())
    return chunks


def _encoder_or_decoder():
    from megatron.core.enums import ModelType

    return ModelType.encoder_or_decoder


def _device():
    from nemo_reason.backend.dist import device_for, read_env

    return device_for(read_env().local_rank)
