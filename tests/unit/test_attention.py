"""The portable SDPA core attention equals Megatron's own DotProductAttention (run on CPU through
the compatibility module), for MHA and GQA, forward and backward."""

import pytest
import torch

from tests.unit.megatron_env import megatron_single  # noqa: F401


def _config(heads, groups, dropout=0.0):
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=heads, num_query_groups=groups,
                             attention_dropout=dropout, use_cpu_initialization=True,
                             masked_softmax_fusion=False, bias_activation_fusion=False)


@pytest.mark.parametrize("heads,groups", [(4, 4), (4, 2), (4, 1)])
def test_sdpa_matches_megatron_dot_product_attention(megatron_single, heads, groups):  # noqa: F811
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from nemo_reason.backend.portable.attention import SDPACoreAttention

    cfg = _config(heads, groups)
    ref = DotProductAttention(cfg, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    ours = SDPACoreAttention(cfg, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    s, b, d = 16, 3, 8
    g = torch.Generator().manual_seed(0)
    q = torch.randn(s, b, heads, d, generator=g, requires_grad=True)
    k = torch.randn(s, b, groups, d, generator=g, requires_grad=True)
    v = torch.randn(s, b, groups, d, generator=g, requires_grad=True)
    out_ref = ref(q, k, v, None)
    grads_ref = torch.autograd.grad(out_ref.square().sum(), (q, k, v))
    out = ours(q, k, v, None)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    assert out.shape == out_ref.shape == (s, b, heads * d)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    for a, r in zip(grads, grads_ref):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)


def test_decode_queries_attend_to_the_whole_cache(megatron_single):  # noqa: F811
    """With fewer queries than keys (KV-cache decoding), query i sees keys up to sk - sq + i."""
    from megatron.core.transformer.enums import AttnMaskType

    from nemo_reason.backend.portable.attention import SDPACoreAttention

    cfg = _config(2, 2)
    attn = SDPACoreAttention(cfg, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    g = torch.Generator().manual_seed(1)
    q = torch.randn(6, 1, 2, 16, generator=g)  # head size = hidden 32 / 2 heads
    k = torch.randn(6, 1, 2, 16, generator=g)
    v = torch.randn(6, 1, 2, 16, generator=g)
    full = attn(q, k, v, None)
    last = attn(q[-1:], k, v, None)
    torch.testing.assert_close(last, full[-1:], rtol=1e-5, atol=1e-6)
