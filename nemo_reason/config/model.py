"""``model.*``: the architecture (dense GPT, MoE, hybrid Mamba-Transformer), Megatron's field names.

Part of the configuration tree in :mod:`nemo_reason.config.schema` (which re-exports it); kept in
its own module because the MoE and Mamba fields make it the largest group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from nemo_reason.config.errors import _check, ConfigError
from nemo_reason.config.layers import MOE, PatternError, model_layers

# The names nemo_reason.backend.select accepts (a test keeps the two equal; config imports no backend).
BACKENDS = ("auto", "te", "local")


@dataclass
class ModelConfig:
    # Model family: "gpt" (dense GPTModel), "moe" (GPTModel with Mixture-of-Experts MLPs, Mixtral /
    # Qwen2-MoE style) or "hybrid" (Megatron MambaModel: Mamba-2, attention, MLP and MoE layers in a
    # pattern, Nemotron-H).
    type: str = "gpt"
    # Layer implementation: "auto" (te with CUDA + Transformer Engine, else local), "te", "local".
    backend: str = "auto"
    num_layers: int = 2
    hidden_size: int = 64
    # MLP inner size (Nemotron-4 uses 4x hidden with squared-ReLU).
    ffn_hidden_size: int = 256
    num_attention_heads: int = 4
    # Key/value heads for grouped-query attention; null means multi-head attention.
    num_query_groups: Optional[int] = None
    # Per-head size; null means hidden_size / num_attention_heads.
    kv_channels: Optional[int] = None
    # "squared_relu" (Nemotron), "gelu", "swiglu" (gated SiLU, Llama).
    activation: str = "squared_relu"
    # "LayerNorm" or "RMSNorm".
    normalization: str = "LayerNorm"
    layernorm_epsilon: float = 1e-5
    add_bias_linear: bool = False
    # Biases on the fused QKV projection only (Qwen2); Megatron's add_qkv_bias. add_bias_linear
    # also gives the QKV projection biases.
    add_qkv_bias: bool = False
    qk_layernorm: bool = False
    # Norm weights stored as gamma - 1 (Nemotron-4's LayerNorm1P); Megatron's
    # layernorm_zero_centered_gamma.
    layernorm_zero_centered_gamma: bool = False
    # "rope", "learned_absolute" or "none".
    position_embedding_type: str = "rope"
    rotary_base: int = 10000
    rotary_percent: float = 1.0
    max_position_embeddings: int = 4096
    untie_embeddings_and_output_weights: bool = True
    # Vocabulary is padded to a multiple of this (and of TP) as in Megatron-LM.
    make_vocab_size_divisible_by: int = 128
    # The published model's vocabulary (its tokenizer), for `nemo-reason plan` (parameters, FLOPs,
    # memory); null: the data tokenizer's. Training sizes the embedding from the tokenizer it loads.
    vocab_size: Optional[int] = None
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    init_method_std: float = 0.02
    # false: build the weights uninitialised (Megatron's perform_initialization), for a model whose
    # every weight is overwritten next (Hugging Face conversion): no transient full-size init copies.
    perform_initialization: bool = True
    # --- hybrid only (type=hybrid); names follow Megatron's TransformerConfig / MambaModel ---
    # Layer pattern, one symbol per layer: M Mamba-2, * attention, - MLP, E MoE (Megatron's
    # hybrid_override_pattern), e.g. "M-M*-M-"; its length must equal num_layers. null: from the ratios.
    hybrid_pattern: Optional[str] = None
    # Target shares of attention / MLP layers when Megatron allocates the pattern itself (the rest are
    # Mamba); with hybrid_pattern set, the pattern must hold the counts the ratios ask for.
    hybrid_attention_ratio: float = 0.0
    hybrid_mlp_ratio: float = 0.0
    # Mamba-2 mixer: SSM state size N, head size P, B/C groups G (the unit of TP sharding), number of
    # heads H (null: 2 * hidden_size / mamba_head_dim, Mamba's expand=2), SSD scan chunk length.
    mamba_state_dim: int = 128
    mamba_head_dim: int = 64
    mamba_num_groups: int = 8
    mamba_num_heads: Optional[int] = None
    mamba_chunk_size: int = 128
    # --- Mixture of Experts (type=moe, and E layers of a hybrid); Megatron's TransformerConfig names ---
    num_moe_experts: Optional[int] = None
    # Every n-th layer is MoE (1: all), type=moe only; hybrids place MoE layers with E in the pattern.
    moe_layer_freq: int = 1
    # Per-expert MLP inner size; null: ffn_hidden_size.
    moe_ffn_hidden_size: Optional[int] = None
    moe_router_topk: int = 2
    # "softmax" (Mixtral, Qwen2) or "sigmoid" (DeepSeek-V3); pre_softmax: softmax before top-k.
    moe_router_score_function: str = "softmax"
    moe_router_pre_softmax: bool = False
    moe_router_topk_scaling_factor: Optional[float] = None
    # Load balancing: "aux_loss" (Switch/GShard), "seq_aux_loss", "global_aux_loss" or "none".
    moe_router_load_balancing_type: str = "aux_loss"
    moe_aux_loss_coeff: float = 0.0
    # Router z-loss (ST-MoE); null turns it off.
    moe_z_loss_coeff: Optional[float] = None
    # Aux-loss-free balancing (DeepSeek-V3): a per-expert bias on the routing scores, updated each step.
    moe_router_enable_expert_bias: bool = False
    moe_router_bias_update_rate: float = 1e-3
    # Shared experts (always on, Qwen2-MoE / DeepSeek): their total inner size; null: none.
    moe_shared_expert_intermediate_size: Optional[int] = None
    moe_shared_expert_gate: bool = False
    # Token dropping: null is dropless; a factor caps each expert at factor x tokens x topk / experts.
    moe_expert_capacity_factor: Optional[float] = None
    moe_pad_expert_input_to_capacity: bool = False
    moe_token_drop_policy: str = "probs"
    # "allgather" or "alltoall" (Megatron's dispatchers).
    moe_token_dispatcher_type: str = "alltoall"
    # Grouped-GEMM experts (Megatron's TEGroupedMLP) on CUDA; the local backend uses SequentialMLP.
    moe_grouped_gemm: bool = True

    @property
    def is_moe(self) -> bool:
        return bool(self.num_moe_experts)

    @property
    def mamba_heads(self) -> int:
        return self.mamba_num_heads or 2 * self.hidden_size // self.mamba_head_dim

    def validate(self) -> None:
        _check(self.type in ("gpt", "moe", "hybrid"), f"model.type={self.type!r} is not one of: gpt, moe, hybrid")
        if self.type == "hybrid":
            self._validate_hybrid()
        _check(self.type != "moe" or self.is_moe, "model.type=moe needs model.num_moe_experts (e.g. 8)")
        _check(self.type != "gpt" or not self.is_moe,
               f"model.num_moe_experts={self.num_moe_experts} with model.type=gpt: use model.type=moe")
        if self.is_moe:
            self._validate_moe()
        # Whether it can run on this machine (te needs CUDA) is the preflight's question.
        _check(self.backend in BACKENDS, f"model.backend={self.backend!r} is not one of {BACKENDS}")
        _check(self.activation in ("squared_relu", "gelu", "swiglu", "relu"),
               f"model.activation={self.activation!r}: use squared_relu, gelu, swiglu or relu")
        _check(self.normalization in ("LayerNorm", "RMSNorm"),
               f"model.normalization={self.normalization!r}: use LayerNorm or RMSNorm")
        _check(self.position_embedding_type in ("rope", "learned_absolute", "none"),
               f"model.position_embedding_type={self.position_embedding_type!r}: use rope, "
               "learned_absolute or none")
        for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads"):
            _check(getattr(self, name) > 0, f"model.{name} must be positive")
        _check(self.vocab_size is None or self.vocab_size > 0, "model.vocab_size must be positive (or null)")
        groups = self.num_query_groups or self.num_attention_heads
        _check(self.num_attention_heads % groups == 0,
               f"model.num_attention_heads={self.num_attention_heads} is not divisible by "
               f"model.num_query_groups={groups}")
        if self.kv_channels is None:
            _check(self.hidden_size % self.num_attention_heads == 0,
                   f"model.hidden_size={self.hidden_size} is not divisible by "
                   f"model.num_attention_heads={self.num_attention_heads}; set model.kv_channels")

    def _validate_moe(self) -> None:
        e = self.num_moe_experts
        _check(e >= 1, "model.num_moe_experts must be >= 1")
        _check(1 <= self.moe_router_topk <= e,
               f"model.moe_router_topk={self.moe_router_topk} must be between 1 and num_moe_experts={e}")
        _check(self.moe_layer_freq >= 1, "model.moe_layer_freq must be >= 1")
        _check(self.moe_router_score_function in ("softmax", "sigmoid"),
               f"model.moe_router_score_function={self.moe_router_score_function!r}: use softmax or sigmoid")
        _check(not (self.moe_router_pre_softmax and self.moe_router_score_function != "softmax"),
               "model.moe_router_pre_softmax=true needs moe_router_score_function=softmax")
        _check(self.moe_router_load_balancing_type in ("aux_loss", "seq_aux_loss", "global_aux_loss", "none"),
               f"model.moe_router_load_balancing_type={self.moe_router_load_balancing_type!r}: use aux_loss, "
               "seq_aux_loss, global_aux_loss or none")
        _check(self.moe_aux_loss_coeff >= 0, "model.moe_aux_loss_coeff must be >= 0")
        _check(self.moe_token_dispatcher_type in ("allgather", "alltoall"),
               f"model.moe_token_dispatcher_type={self.moe_token_dispatcher_type!r}: use allgather or alltoall")
        _check(self.moe_token_drop_policy in ("probs", "position"),
               f"model.moe_token_drop_policy={self.moe_token_drop_policy!r}: use probs or position")
        _check(self.moe_expert_capacity_factor is None or self.moe_expert_capacity_factor > 0,
               "model.moe_expert_capacity_factor must be > 0 (or null: dropless)")
        _check(not self.moe_pad_expert_input_to_capacity or self.moe_expert_capacity_factor is not None,
               "model.moe_pad_expert_input_to_capacity=true needs model.moe_expert_capacity_factor")
        _check(not (self.moe_router_enable_expert_bias and self.moe_router_score_function != "sigmoid"),
               "model.moe_router_enable_expert_bias=true (aux-loss-free balancing) needs "
               "model.moe_router_score_function=sigmoid, as in DeepSeek-V3 and Megatron")

    def _validate_hybrid(self) -> None:
        try:
            layers = model_layers(self)
        except PatternError as err:
            raise ConfigError(str(err)) from None
        _check(MOE not in layers or self.is_moe,
               "model.hybrid_pattern has MoE layers (E): set model.num_moe_experts")
        _check(not self.qk_layernorm, "model.qk_layernorm=true: Megatron's hybrid (Mamba) stack spec has "
               "no QK norm; set model.qk_layernorm=false for model.type=hybrid")
        for name in ("mamba_state_dim", "mamba_head_dim", "mamba_num_groups", "mamba_chunk_size"):
            _check(getattr(self, name) > 0, f"model.{name} must be positive")
        _check(self.mamba_num_heads is not None or (2 * self.hidden_size) % self.mamba_head_dim == 0,
               f"2 x model.hidden_size={2 * self.hidden_size} is not divisible by model.mamba_head_dim="
               f"{self.mamba_head_dim}; set model.mamba_num_heads")
        _check(self.mamba_heads > 0 and self.mamba_heads % self.mamba_num_groups == 0,
               f"Mamba heads ({self.mamba_heads}) are not divisible by model.mamba_num_groups="
               f"{self.mamba_num_groups}: every group needs the same number of heads")
