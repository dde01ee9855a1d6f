"""Portable core attention: Megatron's ``DotProductAttention`` interface over torch SDPA.

Megatron-Core's local ``DotProductAttention`` takes its score buffer from a global memory
buffer allocated on ``torch.cuda.current_device()`` and asserts context parallelism is off;
its fused path (and its context-parallel attention) is TE's. This module keeps Megatron's
constructor and forward signature, so it drops into a layer spec as ``core_attention``, and
computes attention with ``torch.nn.functional.scaled_dot_product_attention`` on any device.

Shapes (Megatron's convention, sequence first):
  query [sq, b, np, hn], key/value [sk, b, ng, hn]  ->  context [sq, b, np * hn]
where np/ng are the attention heads / query groups on this tensor-parallel rank.

Context parallelism (``parallel.cp = C > 1``): the sequence is cut into ``2C`` chunks and CP rank
``r`` holds chunks ``r`` and ``2C-1-r`` (Megatron's load-balanced layout, made by
``get_batch_on_this_cp_rank`` in the forward step; RoPE takes the same chunks through Megatron's
``get_pos_emb_on_this_cp_rank``). Each rank all-gathers K and V over the CP group (one collective
for both, Megatron's ``gather_from_sequence_parallel_region``: its backward reduce-scatters the
K/V gradients back to their owners) and attends with its local queries to all ``C * sq`` keys.
Keys stay in gathered (rank) order, which is a permutation of the sequence; the causal mask is
built from the true positions (query position >= key position), so the result equals
full-sequence attention restricted to the local rows. The load-balanced chunks give every rank
the same number of unmasked scores (SDPA with a dense mask still computes the masked ones).
Memory per rank is O(sq * C * sq) for the mask and scores, fine on the CPU and for moderate
lengths; TE's ring attention (``model.backend=te``) is the path for long sequences on GPUs. Supported under CP: causal and no-mask self-attention with MHA or GQA.

Packed sequences (several documents in one row, Megatron's ``PackedSeqParams``): with
``qkv_format="thd"``, the path Megatron's ``GPTModel``/``MambaModel`` take for packing (tokens
``[1, t]``, RoPE restarted per document by ``apply_rotary_pos_emb(..., cu_seqlens=...)``),
``Attention`` squeezes the batch and this module receives query ``[t, np, hn]``, key/value
``[t, ng, hn]`` and returns ``[t, np * hn]``. ``qkv_format="sbhd"`` with batch 1 is accepted too
(tensors ``[t, 1, ., hn]``, output ``[t, 1, np * hn]``), but there Megatron's RoPE does not restart:
positions run on over the whole row. In both, each token attends only to earlier tokens of its own
document: a block-diagonal causal mask built from ``cu_seqlens_q``/``cu_seqlens_kv`` (their
``_padded`` variants when given, as Megatron's mixer and RoPE use); tokens past the last boundary
form one more document, as in Megatron's ``MambaMixer._create_packed_seq_idx``. When the query and
key documents coincide (self-attention) and the documents are few for the row's length
(:func:`per_document_pays`), that is one SDPA call per document (``is_causal`` for the causal types):
the same values, and only the ``sum(l_i^2)`` scores computed. On one CPU thread, fwd + bwd of a
256-token row with GQA 4/2 heads, head size 32: 0.9 ms for 3 documents against 1.3 ms with a dense
mask (and 1.2 ms for plain ``is_causal`` over the whole row); a tie at 32 documents of 8 tokens;
4.8 against 17 ms for 4 x 256 tokens. Otherwise (many short documents, or different query and key
boundaries) it is one call with a dense ``[t, t]`` boolean mask. The document lengths (one host read
of ``cu_seqlens``) and the mask are computed once per ``PackedSeqParams`` object, i.e. once per
forward, and shared by the layers (:func:`packed_cache`). TE's varlen kernels
(``model.backend=te``) are the path for long packs on GPUs.

Left out: packed sequences with batch > 1 or under context parallelism, attention bias, sliding
windows, softmax offsets, explicit attention masks and KV-cache decoding under context parallelism;
each raises a clear error.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide


def cp_positions(cp_size: int, cp_rank: int, local_len: int, device=None) -> torch.Tensor:
    """Global sequence positions of the ``local_len`` tokens CP rank ``cp_rank`` holds (chunks
    ``cp_rank`` and ``2 * cp_size - 1 - cp_rank`` of ``2 * cp_size``)."""
    c = local_len // 2
    first, second = cp_rank, 2 * cp_size - 1 - cp_rank
    return torch.cat([torch.arange(first * c, (first + 1) * c, device=device),
                      torch.arange(second * c, (second + 1) * c, device=device)])


def packed_doc_ids(cu_seqlens_padded, cu_seqlens, total: int) -> torch.Tensor:
    """Document index of each of ``total`` packed tokens from cumulative lengths ``[0, l0, l0 + l1, ...]``
    (the padded ones when given); tokens past the last boundary get one more index (Megatron's
    ``MambaMixer._create_packed_seq_idx``). Returns ``[total]`` long."""
    cu = cu_seqlens_padded if cu_seqlens_padded is not None else cu_seqlens
    if cu is None:
        raise ValueError("packed_seq_params needs cu_seqlens_q/cu_seqlens_kv (cumulative document lengths "
                         "[0, l0, l0 + l1, ..., t])")
    cu = cu.to(torch.long).flatten()
    if cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) > total or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(f"cu_seqlens must start at 0, not decrease and end at most at the {total} packed "
                         f"tokens; got {cu.tolist()}")
    lengths = torch.diff(torch.cat([cu, cu.new_tensor([total])]))
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=cu.device), lengths)


def packed_cache(packed_seq_params) -> dict:
    """A dict living on ``packed_seq_params`` (one Megatron ``PackedSeqParams`` per micro-batch, passed
    to every layer of one forward): what the layers derive from its ``cu_seqlens`` is computed once.
    Assumes the ``cu_seqlens`` tensors are not changed in place after the first layer read them."""
    cache = getattr(packed_seq_params, "_nemo_reason_cache", None)
    if cache is None:
        cache = {}
        object.__setattr__(packed_seq_params, "_nemo_reason_cache", cache)
    return cache


def per_document_pays(num_docs: int, total: int) -> bool:
    """Whether one SDPA call per document beats one dense-masked call over ``total`` packed tokens:
    the dense call costs ~``total^2``, each extra call a fixed overhead. Measured on one CPU thread
    (fwd + bwd, head size 32): ties at 32 documents in 256 tokens and 8 in 128, so up to
    ``total^2 / 2048`` documents (at least 8)."""
    return num_docs <= max(8, total * total // 2048)


def _doc_lengths(cu_padded, cu, total: int) -> list:
    """Host list of the lengths of the documents :func:`packed_doc_ids` assigns (the tail past the
    last boundary last); they sum to ``total``."""
    return torch.bincount(packed_doc_ids(cu_padded, cu, total)).tolist()


class SDPACoreAttention(MegatronModule):
    """Core attention with Megatron's interface, computed by torch SDPA."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if getattr(config, "window_size", None) is not None:
            raise NotImplementedError("sliding-window attention needs model.backend=te")
        if getattr(config, "softmax_type", "vanilla") != "vanilla":
            raise NotImplementedError("softmax_type other than 'vanilla' needs model.backend=te")
        if pg_collection is None:
            from megatron.core.process_groups_config import ProcessGroupCollection

            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp", "cp"])
        tp_size = pg_collection.tp.size()
        # cp_comm_type picks TE's CP algorithm (p2p ring, a2a, ...); the result is the same, and this
        # module always all-gathers K/V.
        self.cp_group = getattr(pg_collection, "cp", None)
        if self.cp_group is None and config.context_parallel_size > 1:
            from megatron.core import parallel_state

            self.cp_group = parallel_state.get_context_parallel_group()
        self.cp_size = self.cp_group.size() if self.cp_group is not None else 1
        if self.cp_size != config.context_parallel_size:
            raise ValueError(f"the CP group has {self.cp_size} ranks but the config says "
                             f"context_parallel_size={config.context_parallel_size}")
        if self.cp_size > 1 and attention_type != "self":
            raise NotImplementedError("context parallelism in SDPACoreAttention covers self-attention only")
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.num_heads = divide(config.num_attention_heads, tp_size)
        self.num_groups = divide(config.num_query_groups, tp_size)
        head_dim = config.kv_channels
        self.hidden_size_per_partition = self.num_heads * head_dim
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
        if config.apply_query_key_layer_scaling:
            # Megatron scales scores down by the layer number and back up in fp32 softmax; the
            # product is the plain scale, which is what SDPA computes in one go.
            pass
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self._cp_mask_cache = {}

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if attention_bias is not None:
            raise NotImplementedError("attention bias needs model.backend=te")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        if packed_seq_params is not None:
            return self._packed(query, key, value, attention_mask, mask_type, packed_seq_params)
        sq, b = query.shape[0], query.shape[1]
        if self.cp_size > 1:
            key, value, mask = self._gather_kv_over_cp(query, key, value, attention_mask, mask_type)
            causal = False
        # [s, b, h, d] -> [b, h, s, d]
        q = query.permute(1, 2, 0, 3)
        k = key.permute(1, 2, 0, 3)
        v = value.permute(1, 2, 0, 3)
        # Grouped-query attention: SDPA shares each KV head over its query heads itself (the same
        # values as repeating K/V, without materialising the copies: half the time of a decode step's
        # attention on CPU).
        gqa = self.num_heads != self.num_groups
        if self.cp_size == 1:
            causal = mask_type == AttnMaskType.causal and attention_mask is None
            mask = None
            if attention_mask is not None and mask_type != AttnMaskType.no_mask:
                # Megatron masks are True where attention is *not* allowed; SDPA wants the opposite.
                mask = ~attention_mask
            elif mask_type == AttnMaskType.causal and q.shape[2] != k.shape[2]:
                # Decoding with a KV cache: queries are the last sq positions of sk (one query sees
                # every cached key: no mask at all).
                sk = k.shape[2]
                if sq > 1:
                    mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(diagonal=sk - sq)
                causal = False
        dropout = self.dropout_p if self.training else 0.0
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal, scale=self.softmax_scale, enable_gqa=gqa
        )
        # [b, h, sq, d] -> [sq, b, h * d]
        return context.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)

    def _packed(self, query, key, value, attention_mask, mask_type, packed_seq_params):
        """Packed documents in one row: ``thd`` ``[t, n, hn]`` (or ``sbhd`` ``[t, 1, n, hn]``) ->
        ``[t, np * hn]`` (``[t, 1, np * hn]``), with a block-diagonal (causal) mask."""
        fmt = packed_seq_params.qkv_format
        if self.cp_size > 1:
            raise NotImplementedError("packed sequences under context parallelism need model.backend=te; "
                                      "run packed batches with parallel.cp=1")
        if attention_mask is not None:
            raise NotImplementedError("packed sequences take their mask from cu_seqlens; pass attention_mask=None")
        if fmt == "thd":
            if query.dim() != 3:
                raise ValueError(f"packed qkv_format='thd' needs query [t, heads, head_dim], got {tuple(query.shape)}")
            q, k, v = (t.unsqueeze(1) for t in (query, key, value))              # [t, 1, n, hn]
        elif fmt in (None, "sbhd"):
            if query.shape[1] != 1:
                raise NotImplementedError(f"packed sequences hold one row (batch 1), got batch {query.shape[1]}; "
                                          "pack several documents into one row of tokens [1, t]")
            q, k, v = query, key, value
        else:
            raise NotImplementedError(f"packed qkv_format={fmt!r}: use 'thd' (or 'sbhd' with batch 1)")
        sq, sk = q.shape[0], k.shape[0]
        causal = mask_type in (AttnMaskType.causal, AttnMaskType.padding_causal)
        lengths = self._packed_lengths(packed_seq_params, sq, sk)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))                        # [1, n, s, hn]
        sdpa = dict(dropout_p=self.dropout_p if self.training else 0.0, scale=self.softmax_scale,
                    enable_gqa=self.num_heads != self.num_groups)
        if lengths is not None:
            # One call per document, each its own (causal) attention; empty documents skipped.
            parts = [F.scaled_dot_product_attention(a, b, c, is_causal=causal, **sdpa)
                     for a, b, c, n in zip(q.split(lengths, 2), k.split(lengths, 2), v.split(lengths, 2), lengths)
                     if n]
            context = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        else:
            mask = self._packed_mask(packed_seq_params, sq, sk, causal, q.device)
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **sdpa)
        context = context.permute(2, 0, 1, 3).reshape(sq, 1, self.hidden_size_per_partition)
        return context.squeeze(1) if fmt == "thd" else context

    @staticmethod
    def _packed_lengths(params, sq: int, sk: int) -> Optional[list]:
        """The document lengths when queries and keys share their documents and
        :func:`per_document_pays`, else ``None`` (then the dense mask); once per ``params``."""
        cache = packed_cache(params)
        key = ("doc_lengths", sq, sk)
        if key not in cache:
            lengths = None
            if sq == sk:
                lq = _doc_lengths(params.cu_seqlens_q_padded, params.cu_seqlens_q, sq)
                lk = _doc_lengths(params.cu_seqlens_kv_padded, params.cu_seqlens_kv, sk)
                if lq == lk and per_document_pays(sum(1 for n in lq if n), sq):
                    lengths = lq
            cache[key] = lengths
        return cache[key]

    @staticmethod
    def _packed_mask(params, sq: int, sk: int, causal: bool, device) -> torch.Tensor:
        """``[sq, sk]`` bool, True where a query may attend a key (same document, and not later when
        causal, aligned at the end as in decoding); once per ``params``."""
        cache = packed_cache(params)
        key = ("mask", sq, sk, causal, str(device))
        mask = cache.get(key)
        if mask is None:
            doc_q = packed_doc_ids(params.cu_seqlens_q_padded, params.cu_seqlens_q, sq)
            doc_k = packed_doc_ids(params.cu_seqlens_kv_padded, params.cu_seqlens_kv, sk)
            mask = doc_q[:, None] == doc_k[None, :]                                # [sq, sk]
            if causal:
                mask = mask & torch.ones(sq, sk, dtype=torch.bool, device=mask.device).tril(diagonal=sk - sq)
            mask = cache[key] = mask.to(device)
        return mask

    def _gather_kv_over_cp(self, query, key, value, attention_mask, mask_type):
        """All-gather K and V over the CP group; the mask of local queries against all keys
        (``None`` without a causal mask). Returns key/value ``[cp * sk, b, ng, hn]`` and the mask."""
        from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region

        if attention_mask is not None:
            raise NotImplementedError("explicit attention masks under context parallelism need "
                                      "model.backend=te; the causal mask needs none")
        if mask_type not in (AttnMaskType.causal, AttnMaskType.no_mask):
            raise NotImplementedError(f"attn_mask_type={mask_type.name} under context parallelism "
                                      "needs model.backend=te")
        sq = query.shape[0]
        if key.shape[0] != sq or sq % 2:
            raise NotImplementedError("context parallelism needs equal, even local query and key lengths "
                                      "(KV-cache decoding runs with parallel.cp=1)")
        hk = key.shape[-1]
        # One collective for K and V; the backward reduce-scatters their gradients to the owners.
        kv = gather_from_sequence_parallel_region(torch.cat([key, value], dim=-1), tensor_parallel_output_grad=True,
                                                  group=self.cp_group)
        key, value = kv[..., :hk], kv[..., hk:]
        mask = None
        if mask_type == AttnMaskType.causal:
            mask = self._causal_cp_mask(sq, query.device)
        return key, value, mask

    def _causal_cp_mask(self, sq: int, device) -> torch.Tensor:
        """``[sq, cp * sq]`` bool, True where local query i may attend gathered key j."""
        cache_key = (sq, str(device))
        mask = self._cp_mask_cache.get(cache_key)
        if mask is None:
            rank = self.cp_group.rank()
            q_pos = cp_positions(self.cp_size, rank, sq, device)
            k_pos = torch.cat([cp_positions(self.cp_size, r, sq, device) for r in range(self.cp_size)])
            mask = q_pos[:, None] >= k_pos[None, :]
            self._cp_mask_cache = {cache_key: mask}
        return mask
