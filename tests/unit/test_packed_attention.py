"""The portable backend's packed-row fast paths equal the general ones.

Core attention (``SDPACoreAttention._packed``): one SDPA call per document (few documents) and one
call with the dense block-diagonal mask (many) both equal each document attended alone, forward and
backward, for ``thd`` and ``sbhd``, GQA, a tail past the last boundary and an empty document.
RoPE (``PortableSelfAttention``): the packed table computed once per forward gives the tiny GPT's
logits and gradients equal to Megatron's own ``_apply_rotary_pos_emb_thd``, for both of Megatron's
frequency mappings (restarted per document; the row's offsets when the table is as long as the row).
"""

import pytest
import torch

from tests.unit.megatron_env import megatron_single  # noqa: F401


def _params(lengths, qkv_format="thd"):
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return PackedSeqParams(qkv_format=qkv_format, cu_seqlens_q=cu, cu_seqlens_kv=cu,
                           max_seqlen_q=max(lengths), max_seqlen_kv=max(lengths))


@pytest.mark.parametrize("lengths,tail,per_document", [
    ((7, 13, 20), 0, True),
    ((5, 0, 9), 4, True),              # an empty document, and a tail that is one more
    ((2,) * 20, 3, False),             # 21 documents in 43 tokens: the dense mask
])
@pytest.mark.parametrize("qkv_format", ["thd", "sbhd"])
def test_packed_core_attention_equals_each_document_alone(megatron_single, lengths, tail, per_document,  # noqa: F811
                                                          qkv_format):
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    from nemo_reason.backend.portable.attention import SDPACoreAttention, packed_cache

    cfg = TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                            attention_dropout=0.0, use_cpu_initialization=True)
    attn = SDPACoreAttention(cfg, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    total = sum(lengths) + tail
    g = torch.Generator().manual_seed(0)
    shape = (total, 1) if qkv_format == "sbhd" else (total,)
    q = torch.randn(*shape, 4, 8, generator=g, requires_grad=True)
    k = torch.randn(*shape, 2, 8, generator=g, requires_grad=True)
    v = torch.randn(*shape, 2, 8, generator=g, requires_grad=True)
    params = _params(lengths, qkv_format)
    out = attn(q, k, v, None, packed_seq_params=params)
    assert out.shape == (*shape, 32)
    assert (packed_cache(params)[("doc_lengths", total, total)] is not None) == per_document
    w = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))

    start = 0
    for n in (*lengths, tail):
        if n == 0:
            continue
        doc = slice(start, start + n)
        pieces = [t.detach()[doc].reshape(n, 1, t.shape[-2], 8).requires_grad_() for t in (q, k, v)]
        alone = attn(*pieces, None)                                        # plain causal, [n, 1, 32]
        torch.testing.assert_close(out[doc].reshape(n, 1, 32), alone, rtol=0, atol=1e-6)
        ga = torch.autograd.grad((alone * w[doc].reshape(n, 1, 32)).sum(), pieces)
        for got, ref in zip(grads, ga):
            torch.testing.assert_close(got[doc].reshape(ref.shape), ref, rtol=0, atol=1e-6)
        start += n


def _dense_model():
    from nemo_reason.config.store import compose
    from nemo_reason.models import build_model

    torch.manual_seed(0)
    return build_model(compose("tiny", []), 260)[0]


@pytest.mark.parametrize("row_table", [False, True])
def test_packed_rope_equals_megatrons_thd_rope(megatron_single, row_table):  # noqa: F811
    from nemo_reason.backend.portable.attention import packed_cache
    from nemo_reason.backend.portable.self_attention import PortableSelfAttention

    model = _dense_model()
    attn = [m for m in model.modules() if isinstance(m, PortableSelfAttention)]
    assert attn
    lengths = (7, 13, 20)
    g = torch.Generator().manual_seed(4)
    tokens = torch.randint(0, 256, (1, sum(lengths)), generator=g)
    labels = torch.randint(0, 256, (1, sum(lengths)), generator=g)
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    params_of = model.parameters

    def run(megatron_rope: bool):
        params = _params(lengths)
        if row_table:  # the table GPTModel builds from max_seqlen: as long as the row -> Megatron's offsets
            params.max_seqlen_q = params.max_seqlen_kv = sum(lengths)
        for m in attn:
            if megatron_rope:
                m._cached_rope_applies = lambda: False  # this instance takes Megatron's path
        try:
            model.zero_grad(set_to_none=True)
            loss = model(tokens, position_ids, None, labels=labels, packed_seq_params=params)
            loss.sum().backward()
            taken = any(key[0] == "rope" for key in packed_cache(params))
            return loss.detach(), [p.grad.clone() for p in params_of()], taken
        finally:
            for m in attn:
                m.__dict__.pop("_cached_rope_applies", None)

    ref, ref_grads, ref_taken = run(megatron_rope=True)
    ours, grads, taken = run(megatron_rope=False)
    assert taken and not ref_taken
    assert all(m._packed_rope_params is None for m in attn)  # not kept past the forward
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
