"""Packed sequences on the portable backend: several documents in one row, with Megatron's
``PackedSeqParams`` (``qkv_format="thd"``, ``cu_seqlens``), give each document the outputs it gets alone.

Ops level: the causal conv1d and the chunked SSD scan with ``seq_idx`` on a concatenation equal each
piece run alone (and the naive recurrence). Model level: a tiny dense GPT (RoPE, restarted per
document) and a tiny hybrid Mamba/attention model, fp32, per-token logits and losses at 1e-5.
"""

import pytest
import torch

from tests.unit.megatron_env import megatron_single  # noqa: F401

VOCAB = 260
LENGTHS = (7, 13, 20)  # across the scan chunks of 8 below: boundaries inside and at chunk edges


def _seq_idx(lengths):
    return torch.cat([torch.full((n,), i, dtype=torch.int32) for i, n in enumerate(lengths)])[None]


# ------------------------------------------------------------------ ops


def test_conv1d_with_seq_idx_equals_each_sequence_alone():
    from nemo_reason.ops import causal_conv1d_fn

    g = torch.Generator().manual_seed(0)
    dim, width = 6, 4
    w, bias = torch.randn(dim, width, generator=g), torch.randn(dim, generator=g)
    pieces = [torch.randn(1, dim, n, generator=g) for n in (5, 2, 9)]  # one shorter than the filter
    packed = causal_conv1d_fn(torch.cat(pieces, dim=-1), w, bias, seq_idx=_seq_idx((5, 2, 9)), activation="silu")
    alone = torch.cat([causal_conv1d_fn(p, w, bias, activation="silu") for p in pieces], dim=-1)
    torch.testing.assert_close(packed, alone, rtol=0, atol=1e-5)
    # ...and differs from the unpacked conv, which reads across the boundaries.
    assert (causal_conv1d_fn(torch.cat(pieces, -1), w, bias, activation="silu") - alone).abs().max() > 1e-2


@pytest.mark.parametrize("chunk_size", [4, 8, 64])
def test_ssd_scan_with_seq_idx_equals_each_sequence_alone_and_the_recurrence(chunk_size):
    from nemo_reason.ops import mamba_chunk_scan_combined, ssd_naive

    g = torch.Generator().manual_seed(1)
    h, p, ng, n = 4, 8, 2, 16
    lengths = (11, 3, 18)

    def inputs(L):
        return dict(x=torch.randn(1, L, h, p, generator=g), dt=torch.randn(1, L, h, generator=g),
                    B=torch.randn(1, L, ng, n, generator=g), C=torch.randn(1, L, ng, n, generator=g),
                    z=torch.randn(1, L, h, p, generator=g))

    shared = dict(A=-torch.rand(h, generator=g) - 0.5, D=torch.randn(h, generator=g),
                  dt_bias=torch.randn(h, generator=g), dt_softplus=True)
    pieces = [inputs(L) for L in lengths]
    packed_in = {k: torch.cat([q[k] for q in pieces], dim=1) for k in pieces[0]}
    seq_idx = _seq_idx(lengths)
    y = mamba_chunk_scan_combined(**packed_in, **shared, chunk_size=chunk_size, seq_idx=seq_idx)
    alone = torch.cat([mamba_chunk_scan_combined(**q, **shared, chunk_size=chunk_size) for q in pieces], dim=1)
    torch.testing.assert_close(y, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(ssd_naive(**packed_in, **shared, seq_idx=seq_idx), alone, rtol=0, atol=1e-5)
    assert (mamba_chunk_scan_combined(**packed_in, **shared, chunk_size=chunk_size) - alone).abs().max() > 1e-3


# ------------------------------------------------------------------ models


def _model(recipe, *overrides):
    from nemo_reason.config.store import compose
    from nemo_reason.models import build_model

    torch.manual_seed(0)
    cfg = compose(recipe, list(overrides))
    model = build_model(cfg, VOCAB)[0].eval()
    assert next(model.parameters()).dtype == torch.float32
    return model


@pytest.fixture(scope="module")
def dense(megatron_single):  # noqa: F811
    return _model("tiny")


@pytest.fixture(scope="module")
def hybrid(megatron_single):  # noqa: F811
    return _model("tiny_hybrid", "model.mamba_chunk_size=8")


def packed_params(lengths, qkv_format="thd"):
    """Megatron's PackedSeqParams for documents of ``lengths`` packed into one row."""
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return PackedSeqParams(qkv_format=qkv_format, cu_seqlens_q=cu, cu_seqlens_kv=cu,
                           max_seqlen_q=max(lengths), max_seqlen_kv=max(lengths))


def _check_packed_equals_alone(model, lengths, tail=0, qkv_format="thd"):
    """Documents of ``lengths`` (and ``tail`` tokens after the last boundary) packed into one row:
    logits and per-token losses of each document equal running it alone."""
    g = torch.Generator().manual_seed(2)
    total = sum(lengths) + tail
    tokens = torch.randint(0, 256, (1, total), generator=g)
    labels = torch.randint(0, 256, (1, total), generator=g)
    position_ids = torch.cat([torch.arange(n) for n in (*lengths, tail)])[None]
    params = packed_params(lengths, qkv_format)
    with torch.no_grad():
        logits = model(tokens, position_ids, None, packed_seq_params=params)                 # [1, t, V]
        losses = model(tokens, position_ids, None, labels=labels, packed_seq_params=params)  # [1, t]
        start = 0
        for n in lengths:
            doc = slice(start, start + n)
            pos = torch.arange(n)[None]
            alone = model(tokens[:, doc], pos, None)
            alone_loss = model(tokens[:, doc], pos, None, labels=labels[:, doc])
            torch.testing.assert_close(logits[:, doc], alone, rtol=0, atol=1e-5)
            torch.testing.assert_close(losses[:, doc], alone_loss, rtol=0, atol=1e-5)
            start += n
        # The whole row without packing reads across the boundaries: the check above can fail.
        plain = model(tokens, torch.arange(total)[None], None)
        assert (plain[:, lengths[0]:sum(lengths)] - logits[:, lengths[0]:sum(lengths)]).abs().max() > 1e-3


def test_dense_gpt_packed_equals_each_document_alone(dense):
    _check_packed_equals_alone(dense, LENGTHS)


@pytest.mark.parametrize("qkv_format", ["thd", "sbhd"])
def test_hybrid_packed_equals_each_document_alone(hybrid, qkv_format):
    # Tokens past the last boundary form one more document (as Megatron's seq_idx) and touch no other.
    # No position embeddings here, so sbhd (positions not restarted by Megatron) gives the same.
    _check_packed_equals_alone(hybrid, LENGTHS, tail=5, qkv_format=qkv_format)


def test_hybrid_packed_loss_gradient_equals_sum_over_documents(hybrid):
    """What SFT trains on: d(sum of packed token losses) = sum over documents of d(their losses)."""
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 256, (1, sum(LENGTHS)), generator=g)
    labels = torch.randint(0, 256, (1, sum(LENGTHS)), generator=g)
    params = [p for p in hybrid.parameters() if p.requires_grad]

    def grads(loss):
        return torch.autograd.grad(loss, params, allow_unused=True)

    hybrid.train()
    try:
        position_ids = torch.cat([torch.arange(n) for n in LENGTHS])[None]
        packed = grads(hybrid(tokens, position_ids, None, labels=labels,
                              packed_seq_params=packed_params(LENGTHS)).sum())
        alone, start = None, 0
        for n in LENGTHS:
            doc = slice(start, start + n)
            gd = grads(hybrid(tokens[:, doc], torch.arange(n)[None], None, labels=labels[:, doc]).sum())
            alone = gd if alone is None else [a + b for a, b in zip(alone, gd)]
            start += n
    finally:
        hybrid.eval()
    worst = max((a - b).abs().max().item() for a, b in zip(packed, alone) if a is not None)
    assert worst <= 1e-5


def test_packed_refuses_batches_of_several_rows(hybrid):
    params = packed_params((3, 5))
    with torch.no_grad(), pytest.raises(NotImplementedError, match="batch 1"):
        hybrid(torch.zeros(2, 8, dtype=torch.long), torch.arange(8).expand(2, 8), None, packed_seq_params=params)
