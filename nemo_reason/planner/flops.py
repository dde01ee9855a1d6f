"""Model FLOPs per step for dense GPT, with Megatron-LM's formula.

Megatron-LM (``megatron/training/training.py``, ``num_floating_point_operations``) counts the
matmul FLOPs of forward + backward (3x forward, 2 FLOPs per multiply-add):

    12 * B * s * L * h^2 * [ (1 + g/n + s/(2h)) * (d*n/h)     attention: QKV, scores, output
                            + (f/h) * (3/2 if gated else 1)   MLP
                            + V / (2 L h) ]                    logits

with B samples per step, s sequence length, L layers, h hidden, n heads, g query groups,
d head size, f MLP size, V padded vocabulary. The ``s/(2h)`` term counts causal attention as
half of the full score matrix (Megatron-LM's current convention).
"""

from __future__ import annotations


def gpt_flops_per_step(*, batch: int, seq: int, num_layers: int, hidden: int, ffn: int, heads: int,
                       groups: int, kv_channels: int, vocab: int, gated: bool) -> float:
    q_ratio = kv_channels * heads / hidden
    attention = (1 + groups / heads + seq / hidden / 2) * q_ratio
    mlp = (ffn / hidden) * (1.5 if gated else 1.0)
    logits = vocab / (2 * num_layers * hidden)
    return 12.0 * batch * seq * num_layers * hidden**2 * (attention + mlp + logits)


def flops_per_step_from_config(cfg, padded_vocab: int) -> float:
    m, t = cfg.model, cfg.trainer
    kv = m.kv_channels or m.hidden_size // m.num_attention_heads
    return gpt_flops_per_step(
        batch=t.global_batch_size, seq=t.seq_length, num_layers=m.num_layers, hidden=m.hidden_size,
        ffn=m.ffn_hidden_size, heads=m.num_attention_heads,
        groups=m.num_query_groups or m.num_attention_heads, kv_channels=kv, vocab=padded_vocab,
        gated=m.activation == "swiglu",
    )
