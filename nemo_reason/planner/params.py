"""Parameter counts of the models we build, layer type by layer type, without building them.

Counts follow Megatron-Core's modules exactly (the TE and local specs hold the same parameters;
TE only fuses a layer's norm into its first linear):

    norm            h (RMSNorm) or 2h (LayerNorm: weight and bias)
    Mamba-2 layer   norm + in_proj h x (2 d_in + 2 G N + H) + conv1d (d_in + 2 G N) x (d_conv + 1)
                    + dt_bias, A_log, D (H each) + gated norm d_in + out_proj d_in x h
    attention       norm + qkv h x (n + 2 g) d + proj n d x h        (n heads, g KV heads, d head size)
    MLP             norm + fc1 h x f (x2 if gated) + fc2 f x h
    MoE             norm + router E x h + E experts (each an MLP of inner size f_e)
                    + shared experts (one MLP of inner size f_s) + shared-expert gate h
    embeddings      V x h (input), V x h (output, when untied), final norm

with d_in = H x P (Mamba heads x head size), G groups, N state size and V the padded vocabulary.
Biases are added when ``add_bias_linear`` (the q/k/v ones also when ``add_qkv_bias``). *Active*
parameters are those one token passes through: a MoE layer counts its top-k routed experts
instead of all E (router, shared experts and everything else count in full). Pure Python over a
:class:`ModelConfig`: the planner (layouts, memory) builds on it without importing Megatron.
"""

from __future__ import annotations

from typing import Dict

from nemo_reason.config.layers import ATTENTION, MAMBA, MLP, MOE, layer_counts

D_CONV = 4  # Megatron's MambaMixer default conv width


def _norm(m) -> int:
    return m.hidden_size * (2 if m.normalization == "LayerNorm" else 1)


def attention_layer_params(m) -> int:
    h, n = m.hidden_size, m.num_attention_heads
    g = m.num_query_groups or n
    d = m.kv_channels or h // n
    qkv_bias = (n + 2 * g) * d if (m.add_bias_linear or m.add_qkv_bias) else 0
    bias = qkv_bias + (h if m.add_bias_linear else 0)
    return _norm(m) + h * (n + 2 * g) * d + n * d * h + bias


def _mlp(m, f: int) -> int:
    """fc1 + fc2 of one MLP with inner size ``f`` (no norm)."""
    h = m.hidden_size
    fc1 = f * (2 if m.activation == "swiglu" else 1)
    bias = fc1 + h if m.add_bias_linear else 0
    return h * fc1 + f * h + bias


def mlp_layer_params(m) -> int:
    return _norm(m) + _mlp(m, m.ffn_hidden_size)


def moe_expert_params(m) -> int:
    """One routed expert."""
    return _mlp(m, m.moe_ffn_hidden_size or m.ffn_hidden_size)


def moe_layer_params(m, active: bool = False) -> int:
    """A MoE MLP layer: norm, router (Megatron's ``TopKRouter``: E x h, + E bias), routed experts
    (all E, or the top-k a token uses when ``active``), shared experts and their gate. The
    aux-loss-free expert bias is a buffer, not a parameter."""
    h, e = m.hidden_size, m.num_moe_experts
    router = e * h + (e if m.add_bias_linear else 0)
    fs = m.moe_shared_expert_intermediate_size
    shared = (_mlp(m, fs) + (h if m.moe_shared_expert_gate else 0)) if fs else 0
    return _norm(m) + router + (m.moe_router_topk if active else e) * moe_expert_params(m) + shared


def moe_layer_count(m) -> int:
    """MoE layers of a model: every ``moe_layer_freq``-th layer (0, f, 2f, ...) for type=moe, as
    Megatron's integer ``moe_layer_freq``; the E layers of a hybrid pattern."""
    return layer_counts(m)[MOE] if m.is_moe else 0


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


def param_breakdown(m, padded_vocab: int, active: bool = False) -> Dict[str, int]:
    """Parameters per part of the model (all ranks together); ``active``: per token (top-k experts).
    Keys: attention, mlp, and mamba (hybrid) / moe (with experts), embeddings."""
    if m.type not in ("gpt", "moe", "hybrid"):
        raise ValueError(f"no parameter model for model.type={m.type!r}")
    c = layer_counts(m)
    layers = {"mamba": c[MAMBA] * mamba_layer_params(m)} if m.type == "hybrid" else {}
    layers.update(attention=c[ATTENTION] * attention_layer_params(m), mlp=c[MLP] * mlp_layer_params(m))
    if c[MOE]:
        layers["moe"] = c[MOE] * moe_layer_params(m, active)
    return {**layers, "embeddings": embedding_params(m, padded_vocab)}


def param_count(m, padded_vocab: int, active: bool = False) -> int:
    return sum(param_breakdown(m, padded_vocab, active).values())


def expert_param_count(m) -> int:
    """Routed-expert parameters (all layers): the part sharded by ETP x EP instead of TP."""
    return moe_layer_count(m) * m.num_moe_experts * moe_expert_params(m) if m.is_moe else 0
