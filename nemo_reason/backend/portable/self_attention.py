"""Megatron's ``SelfAttention`` with RoPE from cached cos/sin tables when decoding with a KV cache.

In Megatron-Core's static-batching inference path (no flash decode, which needs CUDA kernels),
``Attention._adjust_key_value_for_inference`` stores the *unrotated* keys in the cache and returns
the rotary table sliced to ``[:sequence_end]``; ``Attention.forward`` then applies RoPE
(``rope_utils._apply_rotary_pos_emb_bshd``) to the new queries and to *every cached key*, computing
``cos``/``sin`` of the frequencies again at each call, per layer, per decode step. On the CPU at
decode sizes that is about a seventh of a step.

:class:`PortableSelfAttention` is ``SelfAttention`` (constructor, parameters, state-dict keys,
training and no-cache forward unchanged) whose ``_adjust_key_value_for_inference`` rotates the new
queries and keys itself, before the keys are stored, and hands Megatron no rotary table, so
``forward`` applies none: the cache then holds rotated keys, as Megatron's flash-decode path keeps
them. ``cos(freqs) * mscale`` and ``sin(freqs) * mscale`` are computed once per rotary table (the
model's ``RotaryEmbedding`` returns one table per maximum length, lru-cached) and sliced per step.
The rotation is Megatron's formula ``t * cos + rotate_half(t) * sin`` with ``rotate_half(t) * sin``
computed as ``[t_2, t_1] * [-sin_1, sin_2]`` (the same products, the sign moved to the table), so
the values equal Megatron's (tests/unit/test_rollout_fast_path.py).

Left out (Megatron's path is taken): interleaved RoPE, multi-latent attention, fused RoPE, flash
decode, dynamic batching, a query and key with different rotary tables.
"""

from __future__ import annotations

import torch
from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import (
    _yarn_get_concentration_factor_from_config,
)
from megatron.core.transformer.attention import SelfAttention


class PortableSelfAttention(SelfAttention):
    """``SelfAttention`` that rotates queries and keys once, from cached tables, when decoding."""

    _rope_table = None  # (freqs, dtype, cos [S, 1, 1, d], signed sin [S, 1, 1, d])

    def _adjust_key_value_for_inference(self, inference_context, query, key, value, rotary_pos_emb,
                                        rotary_pos_cos=None, rotary_pos_sin=None, rotary_pos_cos_sin=None,
                                        sequence_len_offset=None, **kwargs):
        if (inference_context is None or rotary_pos_emb is None or kwargs or not self._cached_rope_applies()
                or not inference_context.is_static_batching() or rotary_pos_emb[0] is not rotary_pos_emb[1]):
            return super()._adjust_key_value_for_inference(
                inference_context, query, key, value, rotary_pos_emb, rotary_pos_cos, rotary_pos_sin,
                rotary_pos_cos_sin, sequence_len_offset, **kwargs)
        cos, sin = self._cos_sin(rotary_pos_emb[0], query.dtype)
        start = inference_context.sequence_len_offset
        cos, sin = cos[start:start + query.shape[0]], sin[start:start + query.shape[0]]
        query, key = _rotate(query, cos, sin), _rotate(key, cos, sin)
        return super()._adjust_key_value_for_inference(
            inference_context, query, key, value, None, rotary_pos_cos, rotary_pos_sin, rotary_pos_cos_sin,
            sequence_len_offset)

    def _cached_rope_applies(self) -> bool:
        c = self.config
        return not (c.rotary_interleaved or c.multi_latent_attention or c.apply_rope_fusion or c.flash_decode)

    def _cos_sin(self, freqs: torch.Tensor, dtype):
        table = self._rope_table
        if table is None or table[0] is not freqs or table[1] != dtype:
            mscale = _yarn_get_concentration_factor_from_config(self.config)
            cos = (torch.cos(freqs) * mscale).to(dtype)
            sin = (torch.sin(freqs) * mscale).to(dtype)
            half = sin.shape[-1] // 2
            sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
            table = self._rope_table = (freqs, dtype, cos, sin)
        return table[2], table[3]


def _rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE of ``t [s, b, n, hd]`` with ``cos``/signed ``sin [s, 1, 1, d]`` (``d <= hd``; the last
    ``hd - d`` channels pass through, as in Megatron)."""
    d = cos.shape[-1]
    head, rest = (t, None) if d == t.shape[-1] else (t[..., :d], t[..., d:])
    # [t2, t1] (one cat of two views: cheaper than torch.roll at decode sizes) times [-sin_1, sin_2].
    out = head * cos + torch.cat((head[..., d // 2:], head[..., :d // 2]), dim=-1) * sin
    return out if rest is None else torch.cat((out, rest), dim=-1)
