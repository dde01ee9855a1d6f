"""Portable core attention: Megatron's ``DotProductAttention`` interface over torch SDPA.

Megatron-Core's local ``DotProductAttention`` takes its score buffer from a global memory
buffer allocated on ``torch.cuda.current_device()`` and asserts context parallelism is off;
its fused path is TE's. This module keeps Megatron's constructor and forward signature, so it
drops into a layer spec as ``core_attention``, and computes attention with
``torch.nn.functional.scaled_dot_product_attention`` on any device.

Shapes (Megatron's convention, sequence first):
  query [sq, b, np, hn], key/value [sk, b, ng, hn]  ->  context [sq, b, np * hn]
where np/ng are the attention heads / query groups on this tensor-parallel rank.

Left out: packed sequences (THD), attention bias, sliding windows, softmax offsets, and
context parallelism (the parallelism issue adds a CP path); each raises a clear error.
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
        if config.context_parallel_size != 1:
            raise NotImplementedError(
                "SDPACoreAttention has no context-parallel path yet: run with parallel.cp=1 "
                "on the local backend (or model.backend=te on CUDA)."
            )
        if getattr(config, "window_size", None) is not None:
            raise NotImplementedError("sliding-window attention needs model.backend=te")
        if getattr(config, "softmax_type", "vanilla") != "vanilla":
            raise NotImplementedError("softmax_type other than 'vanilla' needs model.backend=te")
        if pg_collection is None:
            from megatron.core.process_groups_config import ProcessGroupCollection

            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        tp_size = pg_collection.tp.size()
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
        if packed_seq_params is not None:
            raise NotImplementedError("packed sequences need model.backend=te")
        if attention_bias is not None:
            raise NotImplementedError("attention bias needs model.backend=te")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        sq, b = query.shape[0], query.shape[1]
        # [s, b, h, d] -> [b, h, s, d]
        q = query.permute(1, 2, 0, 3)
        k = key.permute(1, 2, 0, 3)
        v = value.permute(1, 2, 0, 3)
        if self.num_heads != self.num_groups:
            rep = self.num_heads // self.num_groups
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        causal = mask_type == AttnMaskType.causal and attention_mask is None
        mask = None
        if attention_mask is not None and mask_type != AttnMaskType.no_mask:
            # Megatron masks are True where attention is *not* allowed; SDPA wants the opposite.
            mask = ~attention_mask
        elif mask_type == AttnMaskType.causal and q.shape[2] != k.shape[2]:
            # Decoding with a KV cache: queries are the last sq positions of sk.
            sk = k.shape[2]
            mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(diagonal=sk - sq)
            causal = False
        dropout = self.dropout_p if self.training else 0.0
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal, scale=self.softmax_scale
        )
        # [b, h, sq, d] -> [sq, b, h * d]
        return context.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)
