"""Model FLOPs per step for dense GPT, MoE and hybrids, with Megatron-LM's formulas.

Megatron-LM (``megatron/training/training.py``, ``num_floating_point_operations``) counts the
matmul FLOPs of forward + backward (3x forward, 2 FLOPs per multiply-add):

    12 * B * s * L * h^2 * [ (1 + g/n + s/(2h)) * (d*n/h)     attention: QKV, scores, output
                            + (f/h) * (3/2 if gated else 1)   MLP
                            + V / (2 L h) ]                    logits

with B samples per step, s sequence length, L layers, h hidden, n heads, g query groups,
d head size, f MLP size, V padded vocabulary. The ``s/(2h)`` term counts causal attention as
half of the full score matrix (Megatron-LM's current convention).

MoE layers (``transformer_flops`` there) replace the MLP term of their layer by the MLPs a token
actually passes through: ``k * f_e`` for the top-k routed experts plus ``f_s`` for the shared
experts, both x 3/2 when gated. The router (h x E) is not counted, as in Megatron-LM. Hybrids use
``hybrid_flops`` (per layer type, x3 for forward + backward), whose MoE layers count the same way.
"""

from __future__ import annotations


def gpt_flops_per_step(*, batch: int, seq: int, num_layers: int, hidden: int, ffn: int, heads: int,
                       groups: int, kv_channels: int, vocab: int, gated: bool, num_moe_layers: int = 0,
                       moe_ffn: int = 0, moe_topk: int = 0, shared_ffn: int = 0) -> float:
    q_ratio = kv_channels * heads / hidden
    attention = (1 + groups / heads + seq / hidden / 2) * q_ratio
    gate = 1.5 if gated else 1.0
    # MLP inner sizes summed over layers, per layer on average: dense layers f, MoE layers k f_e + f_s.
    mlp_inner = (num_layers - num_moe_layers) * ffn + num_moe_layers * (moe_topk * moe_ffn + shared_ffn)
    mlp = mlp_inner / num_layers / hidden * gate
    logits = vocab / (2 * num_layers * hidden)
    return 12.0 * batch * seq * num_layers * hidden**2 * (attention + mlp + logits)


def hybrid_flops_per_step(*, batch: int, seq: int, hidden: int, layers: dict, ffn: int, heads: int, groups: int,
                          kv_channels: int, vocab: int, gated: bool, mamba_heads: int, mamba_head_dim: int,
                          mamba_groups: int, mamba_state: int, moe_ffn: int = 0, moe_topk: int = 0,
                          shared_ffn: int = 0) -> float:
    """Megatron-LM's ``hybrid_flops`` (forward FLOPs per layer type, x3 for forward + backward).

    ``layers`` counts layers by symbol ({"M": .., "*": .., "-": .., "E": ..}). Per layer and token:
    Mamba 2h(2 d_in + 2GN + H) in_proj + 7 d_in N scan + 2 d_in h out_proj; attention
    4h(dn)(1 + g/n) + 2(dn)s (causal half of the scores); MLP 4hf (x1.5 gated); MoE
    4h(k f_e + f_s) (x1.5 gated); logits 2hV.
    """
    bs = batch * seq
    d_in = mamba_heads * mamba_head_dim
    gate = 1.5 if gated else 1.0
    mamba = 2 * bs * hidden * (2 * d_in + 2 * mamba_groups * mamba_state + mamba_heads) \
        + 7 * bs * d_in * mamba_state + 2 * bs * d_in * hidden
    q = kv_channels * heads
    attention = 4 * bs * hidden * q * (1 + groups / heads) + 2 * bs * q * seq
    mlp = 4 * bs * hidden * ffn * gate
    moe = 4 * bs * hidden * (moe_topk * moe_ffn + shared_ffn) * gate
    logits = 2 * bs * hidden * vocab
    fwd = layers.get("M", 0) * mamba + layers.get("*", 0) * attention + layers.get("-", 0) * mlp \
        + layers.get("E", 0) * moe + logits
    return 3.0 * fwd


def _moe_kwargs(m) -> dict:
    if not m.is_moe:
        return {}
    return {"moe_ffn": m.moe_ffn_hidden_size or m.ffn_hidden_size, "moe_topk": m.moe_router_topk,
            "shared_ffn": m.moe_shared_expert_intermediate_size or 0}


def flops_per_step_from_config(cfg, padded_vocab: int) -> float:
    """Model FLOPs of one optimizer step (``trainer.global_batch_size`` sequences)."""
    m, t = cfg.model, cfg.trainer
    from nemo_reason.config.layers import MOE, layer_counts

    layers = layer_counts(m)
    if m.type == "hybrid":
        return hybrid_flops_per_step(
            batch=t.global_batch_size, seq=t.seq_length, hidden=m.hidden_size, layers=layers,
            ffn=m.ffn_hidden_size, heads=m.num_attention_heads, groups=m.num_query_groups or m.num_attention_heads,
            kv_channels=m.kv_channels or m.hidden_size // m.num_attention_heads, vocab=padded_vocab,
            gated=m.activation == "swiglu", mamba_heads=m.mamba_heads, mamba_head_dim=m.mamba_head_dim,
            mamba_groups=m.mamba_num_groups, mamba_state=m.mamba_state_dim, **_moe_kwargs(m),
        )
    kv = m.kv_channels or m.hidden_size // m.num_attention_heads
    return gpt_flops_per_step(
        batch=t.global_batch_size, seq=t.seq_length, num_layers=m.num_layers, hidden=m.hidden_size,
        ffn=m.ffn_hidden_size, heads=m.num_attention_heads,
        groups=m.num_query_groups or m.num_attention_heads, kv_channels=kv, vocab=padded_vocab,
        gated=m.activation == "swiglu", num_moe_layers=layers[MOE], **_moe_kwargs(m),
    )
