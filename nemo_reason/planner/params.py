"""Parameter counts of the models we build, layer type by layer type, without building them.

Counts follow Megatron-Core's modules exactly (the TE and local specs hold the same parameters;
TE only fuses a layer's norm into its first linear):

    norm            h (RMSNorm) or 2h (LayerNorm: weight and bias)
    Mamba-2 layer   norm + in_proj h x (2 d_in + 2 G N + H) + conv1d (d_in + 2 G N) x (d_conv + 1)
                    + dt_bias, A_log, D (H each) + gated norm d_in + out_proj d_in x h
    attention       norm + qkv h x (n + 2 g) d + proj n d x h        (n heads, g KV heads, d head size)
    MLP             norm + fc1 h x f (x2 if gated) + fc2 f x h
    embeddings      V x h (input), V x h (output, when untied), final norm

with d_in = H x P (Mamba heads x head size), G groups, N state size and V the padded vocabulary.
Biases are added when ``add_bias_linear``. Pure Python over a :class:`ModelConfig`: the planner
(layouts, memory) builds on it without importing Megatron.
"""

from __future__ import annotations

from typing import Dict

from nemo_reason.models.pattern import ATTENTION, MAMBA, MLP, MOE, allocate, counts

D_CONV = 4  # Megatron's MambaMixer default conv width


def _norm(m) -> int:
    return m.hidden_size * (2 if m.normalization == "LayerNorm" else 1)


def attention_layer_params(m) -> int:
    h, n = m.hidden_size, m.num_attention_heads
    g = m.num_query_groups or n
    d = m.kv_channels or h // n
    bias = (n + 2 * g) * d + h if m.add_bias_linear else 0
    return _norm(m) + h * (n + 2 * g) * d + n * d * h + bias


def mlp_layer_params(m) -> int:
    h, f = m.hidden_size, m.ffn_hidden_size
    fc1 = f * (2 if m.activation == "swiglu" else 1)
    bias = fc1 + h if m.add_bias_linear else 0
    return _norm(m) + h * fc1 + f * h + bias


def mamba_layer_params(m) -> int:
    h, H, P = m.hidden_size, m.mamba_heads, m.mamba_head_dim
    G, N = m.mamba_num_groups, m.mamba_state_dim
    d_in = H * P
    conv_dim = d_in + 2 * G * N
    in_proj = h * (2 * d_in + 2 * G * N + H)
    return _norm(m) + in_proj + conv_dim * (D_CONV + 1) + 3 * H + d_in + d_in * h


def embedding_params(m, padded_vocab: int) -> int:
    tables = 2 if m.untie_embeddings_and_output_weights else 1
    pos = m.max_position_embeddings * m.hidden_size if m.position_embedding_type == "learned_absolute" else 0
    return tables * padded_vocab * m.hidden_size + pos + _norm(m)  # + final norm


def param_breakdown(m, padded_vocab: int) -> Dict[str, int]:
    """Total parameters per part of the model (all ranks together)."""
    if m.type == "gpt":
        layers = {"attention": m.num_layers * attention_layer_params(m), "mlp": m.num_layers * mlp_layer_params(m)}
    elif m.type == "hybrid":
        c = counts(allocate(m.num_layers, m.hybrid_attention_ratio, m.hybrid_mlp_ratio, m.hybrid_pattern))
        if c[MOE]:
            raise NotImplementedError("parameter counts for MoE layers arrive with the MoE model type")
        layers = {"mamba": c[MAMBA] * mamba_layer_params(m), "attention": c[ATTENTION] * attention_layer_params(m),
                  "mlp": c[MLP] * mlp_layer_params(m)}
    else:
        raise ValueError(f"no parameter model for model.type={m.type!r}")
    return {**layers, "embeddings": embedding_params(m, padded_vocab)}


def param_count(m, padded_vocab: int) -> int:
    return sum(param_breakdown(m, padded_vocab).values())
