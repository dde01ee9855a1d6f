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

Packed rows (``PackedSeqParams`` with ``qkv_format="thd"``, no KV cache): Megatron's
``_apply_rotary_pos_emb_thd`` splits q and k per document in every layer and computes
``cos``/``sin`` of the gathered frequencies for each (about 0.75 ms of a 256-token row's fwd + bwd
per layer on one CPU thread). Here the packed table -- the frequencies at each token's position as
Megatron picks them (restarted at each document, or the row's offsets when the table is as long as
the row) -- and its ``cos``/``sin`` are computed once per ``PackedSeqParams`` object, i.e. once per
forward, and shared by the layers (:func:`~nemo_reason.backend.portable.attention.packed_cache`);
each layer rotates q and k with it in ``_adjust_key_value_for_inference`` (which Megatron calls with
no inference context too, before it would apply RoPE) and hands Megatron no rotary table. The
values equal Megatron's bit for bit (the same products), at half the time. The packed params reach
that hook through a forward pre-hook that records them (``forward`` itself is Megatron's). The core
attention still gets the packed params.

Left out (Megatron's path is taken): interleaved RoPE, multi-latent attention, fused RoPE, flash
decode, dynamic batching, a query and key with different rotary tables; for packed rows also
multimodal RoPE, context parallelism, and ``cu_seqlens`` not ending at the row's length or with a
document longer than the table (Megatron's errors then stand).
"""

from __future__ import annotations

import torch
from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import (
    _yarn_get_concentration_factor_from_config,
)
from megatron.core.transformer.attention import SelfAttention

from nemo_reason.backend.portable.attention import packed_cache


class PortableSelfAttention(SelfAttention):
    """``SelfAttention`` that rotates queries and keys once, from cached tables, when decoding."""

    _rope_table = None  # (freqs, dtype, cos [S, 1, 1, d], signed sin [S, 1, 1, d])
    _packed_rope_params = None  # the PackedSeqParams ("thd") of the running forward, without a KV cache

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_forward_pre_hook(_record_packed_params, with_kwargs=True)
        self.register_forward_hook(_forget_packed_params, with_kwargs=True, always_call=True)

    def _adjust_key_value_for_inference(self, inference_context, query, key, value, rotary_pos_emb,
                                        rotary_pos_cos=None, rotary_pos_sin=None, rotary_pos_cos_sin=None,
                                        sequence_len_offset=None, **kwargs):
        if inference_context is None:
            if self._packed_rope_params is not None and rotary_pos_emb is not None and not kwargs:
                table = self._packed_rope(self._packed_rope_params, rotary_pos_emb, query, key)
                if table is not None:
                    query, key = _rotate(query, *table[0]), _rotate(key, *table[1])
                    rotary_pos_emb = None
            return super()._adjust_key_value_for_inference(
                inference_context, query, key, value, rotary_pos_emb, rotary_pos_cos, rotary_pos_sin,
                rotary_pos_cos_sin, sequence_len_offset, **kwargs)
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

    def _packed_rope(self, params, rotary_pos_emb, query, key):
        """``((cos, sin) for the query, (cos, sin) for the key)``, each ``[t, 1, 1, d]``, of a packed
        row (query/key ``[t, 1, n, hn]``), or ``None`` where Megatron's path must run."""
        freqs = rotary_pos_emb[0]
        if (freqs is None or rotary_pos_emb[1] is not freqs or query.shape[1] != 1 or freqs.dim() != 4
                or freqs.shape[1:3] != (1, 1) or not self._cached_rope_applies()
                or getattr(self.config, "mrope_section", None) is not None or self.pg_collection.cp.size() != 1):
            return None
        cu_q = params.cu_seqlens_q_padded if params.cu_seqlens_q_padded is not None else params.cu_seqlens_q
        cu_k = params.cu_seqlens_kv_padded if params.cu_seqlens_kv_padded is not None else params.cu_seqlens_kv
        tables = []
        for cu, t in ((cu_q, query), (cu_k, key)):
            cache = packed_cache(params)
            ck = ("rope", id(cu), id(freqs), t.shape[0], t.dtype, str(t.device))
            entry = cache.get(ck)
            if entry is None or entry[0] is not cu or entry[1] is not freqs:
                entry = cache[ck] = (cu, freqs, self._packed_cos_sin(cu, freqs, t.shape[0], t.dtype, t.device))
            if entry[2] is None:
                return None
            tables.append(entry[2])
        return tables

    def _packed_cos_sin(self, cu, freqs, total: int, dtype, device):
        """Megatron's ``_apply_rotary_pos_emb_thd`` frequencies (CP size 1) at each of ``total`` packed
        tokens, as ``cos``/signed ``sin`` ``[total, 1, 1, d]``; ``None`` where it would fail."""
        if cu is None:
            return None
        cu = cu.to(torch.long).flatten()
        if cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) != total:
            return None
        lengths = cu[1:] - cu[:-1]
        if bool((lengths < 0).any()):
            return None
        positions = torch.arange(total, device=cu.device)
        if freqs.shape[0] != total:  # Megatron's "traditional" mapping: freqs[:l_i] for each document
            if int(lengths.max()) > freqs.shape[0]:
                return None
            positions = positions - torch.repeat_interleave(cu[:-1], lengths)
        # else: freqs covers the row and Megatron takes freqs[offset_i : offset_i + l_i], the row's positions
        f = freqs[positions.to(freqs.device)]
        mscale = _yarn_get_concentration_factor_from_config(self.config)
        cos = (torch.cos(f) * mscale).to(dtype)
        sin = (torch.sin(f) * mscale).to(dtype)
        half = sin.shape[-1] // 2
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        return cos.to(device), sin.to(device)

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


def _record_packed_params(module, args, kwargs):
    """Forward pre-hook: keep the call's packed params ("thd", no KV cache) for
    ``_adjust_key_value_for_inference``, which Megatron calls without them."""
    # Megatron's positions: (hidden_states, attention_mask, key_value_states, inference_context, ...,
    # packed_seq_params at 9); TransformerLayer passes all but the first by keyword.
    params = kwargs.get("packed_seq_params", args[9] if len(args) > 9 else None)
    context = kwargs.get("inference_context", args[3] if len(args) > 3 else None)
    no_cache = context is None and kwargs.get("inference_params") is None
    module._packed_rope_params = params if (params is not None and params.qkv_format == "thd" and no_cache) else None


def _forget_packed_params(module, args, kwargs, output):
    module._packed_rope_params = None


def _rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE of ``t [s, b, n, hd]`` with ``cos``/signed ``sin [s, 1, 1, d]`` (``d <= hd``; the last
    ``hd - d`` channels pass through, as in Megatron)."""
    d = cos.shape[-1]
    head, rest = (t, None) if d == t.shape[-1] else (t[..., :d], t[..., d:])
    # [t2, t1] (one cat of two views: cheaper than torch.roll at decode sizes) times [-sin_1, sin_2].
    out = head * cos + torch.cat((head[..., d // 2:], head[..., :d // 2]), dim=-1) * sin
    return out if rest is None else torch.cat((out, rest), dim=-1)
