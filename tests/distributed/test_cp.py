"""Context parallelism, piece by piece, in two real gloo processes (CP=2) against one full sequence.

One spawn (module fixture) runs every check on both ranks and returns its numbers; the tests read them:

- SDPA core attention (causal MHA, causal GQA, GQA with one group, no mask): each rank holds
  chunks ``r`` and ``3 - r`` of 4 of the sequence; its output and its q/k/v gradients (k/v's
  reduce-scattered back from the other rank's queries) equal the full-sequence attention's rows;
- the portable Mamba mixer through Megatron's ``MambaContextParallel`` (a group per CP rank, and
  one group shared by both ranks): output and input gradient rows equal the CP=1 mixer's, and the
  parameter gradients summed over the CP ranks equal its parameter gradients;
- the data layout: ``batch_on_this_cp_rank`` keeps the positions the attention mask assumes, and
  Megatron's RoPE under CP (``get_pos_emb_on_this_cp_rank``, pinned memory on CPU) gives the rows
  of the full-sequence table at those positions.

End-to-end loss parity (dense, hybrid, TP x CP) lives in ``test_layouts.py``.
"""

from __future__ import annotations

import types

import pytest
import torch

from tests.spawn import spawn

S, B, D = 32, 2, 8  # attention: sequence, batch, head size
ATTN_CASES = {"causal_mha": (4, 4, "causal"), "causal_gqa": (4, 2, "causal"), "causal_gqa1": (4, 1, "causal"),
              "nomask_gqa": (4, 2, "no_mask")}
MAMBA_CASES = {"mamba_group_per_rank": 2, "mamba_shared_group": 1}  # mamba_num_groups (8 heads)


def _max_err(a, b) -> float:
    return float((a.detach() - b.detach()).abs().max())


def _attention_checks(rank, cp_group):
    import torch.nn.functional as F
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    from nemo_reason.backend.portable.attention import SDPACoreAttention, cp_positions

    idx = cp_positions(2, rank, S // 2)
    out = {}
    for name, (heads, groups, mask) in ATTN_CASES.items():
        mask_type = AttnMaskType[mask]
        cfg = TransformerConfig(num_layers=1, hidden_size=heads * D, num_attention_heads=heads,
                                num_query_groups=groups, context_parallel_size=2, attention_dropout=0.0,
                                use_cpu_initialization=True)
        pgs = types.SimpleNamespace(tp=_single_group(), cp=cp_group)
        attn = SDPACoreAttention(cfg, layer_number=1, attn_mask_type=mask_type, attention_type="self",
                                 pg_collection=pgs)
        g = torch.Generator().manual_seed(len(name))
        q = torch.randn(S, B, heads, D, generator=g, requires_grad=True)
        k = torch.randn(S, B, groups, D, generator=g, requires_grad=True)
        v = torch.randn(S, B, groups, D, generator=g, requires_grad=True)
        w = torch.randn(S, B, heads * D, generator=g)
        # Reference: plain SDPA over the whole sequence.
        rep = heads // groups
        ref = F.scaled_dot_product_attention(
            q.permute(1, 2, 0, 3), k.permute(1, 2, 0, 3).repeat_interleave(rep, 1),
            v.permute(1, 2, 0, 3).repeat_interleave(rep, 1), is_causal=mask == "causal",
        ).permute(2, 0, 1, 3).reshape(S, B, heads * D)
        ref_grads = torch.autograd.grad((ref * w).sum(), (q, k, v))
        local = [t.detach()[idx].clone().requires_grad_() for t in (q, k, v)]
        got = attn(*local, None)
        got_grads = torch.autograd.grad((got * w[idx]).sum(), local)
        out[name] = {"out": _max_err(got, ref[idx]),
                     **{f"grad_{n}": _max_err(a, r[idx]) for n, a, r in zip("qkv", got_grads, ref_grads)}}
    return out


def _single_group():
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_group()  # size 1 here (TP=1)


def _mamba_checks(rank, cp_group):
    import torch.distributed as dist
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.transformer_config import TransformerConfig

    from nemo_reason.backend.portable.attention import cp_positions
    from nemo_reason.backend.portable.mamba_mixer import MambaMixerSubmodules, PortableMambaMixer

    L, d_model = 64, 32
    idx = cp_positions(2, rank, L // 2)
    sub = MambaMixerSubmodules(in_proj=ColumnParallelLinear, out_proj=RowParallelLinear)
    out = {}
    for name, groups in MAMBA_CASES.items():
        cfg = TransformerConfig(num_layers=1, hidden_size=d_model, num_attention_heads=4,
                                use_cpu_initialization=True, mamba_state_dim=8, mamba_head_dim=8,
                                mamba_num_groups=groups)  # 8 heads of 8, d_inner 64
        one = _single_group()
        mixers = []
        for cp in (one, cp_group):  # the same draws: identical parameters
            torch.manual_seed(0)
            mixers.append(PortableMambaMixer(cfg, sub, d_model=d_model, layer_number=1, chunk_size=16,
                                             pg_collection=types.SimpleNamespace(tp=one, cp=cp)))
        ref_mixer, cp_mixer = mixers
        g = torch.Generator().manual_seed(7)
        x = torch.randn(L, B, d_model, generator=g, requires_grad=True)
        w = torch.randn(L, B, d_model, generator=g)
        ref, _ = ref_mixer(x)
        (ref * w).sum().backward()
        x_local = x.detach()[idx].clone().requires_grad_()
        got, _ = cp_mixer(x_local)
        (got * w[idx]).sum().backward()
        param_err = 0.0
        for (n, p_ref), (n2, p) in zip(ref_mixer.named_parameters(), cp_mixer.named_parameters()):
            assert n == n2
            grad = p.grad.clone()
            dist.all_reduce(grad, group=cp_group)
            param_err = max(param_err, _max_err(grad, p_ref.grad) / max(float(p_ref.grad.abs().max()), 1e-6))
        out[name] = {"out": _max_err(got, ref[idx]), "grad_x": _max_err(x_local.grad, x.grad[idx]),
                     "param_grad_rel": param_err, "heads_local": cp_mixer.cp.nheads_local_tpcp,
                     "groups_local": cp_mixer.cp.ngroups_local_tpcp}
    return out


def _layout_checks(rank, cp_group):
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    from nemo_reason.backend.portable.attention import cp_positions
    from nemo_reason.training.losses import batch_on_this_cp_rank

    pos = torch.arange(S).repeat(B, 1)
    batch = {"tokens": pos + 100, "labels": pos + 101, "position_ids": pos.clone(),
             "loss_mask": (pos % 3 != 0).float()}
    local, num_tokens = batch_on_this_cp_rank(batch)
    expect = cp_positions(2, rank, S // 2)
    rope = RotaryEmbedding(kv_channels=D, rotary_percent=1.0, cp_group=cp_group)
    full = RotaryEmbedding(kv_channels=D, rotary_percent=1.0, cp_group=_single_group())
    return {"positions_match": bool((local["position_ids"] == expect).all() and (local["tokens"] == expect + 100).all()
                                    and (local["labels"] == expect + 101).all()),
            "num_tokens": float(num_tokens), "full_tokens": float(batch["loss_mask"].sum()),
            "local_tokens": float(local["loss_mask"].sum()),
            "rope": _max_err(rope(S), full(S)[expect])}


def _worker(rank: int) -> dict:
    torch.set_num_threads(1)
    from megatron.core import parallel_state

    from nemo_reason.backend import dist as bdist
    from nemo_reason.backend import prepare
    from nemo_reason.parallel import ParallelDims

    bdist.init_process_group()
    prepare("local")
    ParallelDims(tp=1, pp=1, cp=2, ep=1, etp=None, vpp=None, world_size=2).init()
    cp_group = parallel_state.get_context_parallel_group()
    result = {}
    try:
        result.update(_attention_checks(rank, cp_group))
        result.update(_mamba_checks(rank, cp_group))
        result["layout"] = _layout_checks(rank, cp_group)
    finally:
        ParallelDims.destroy()
        torch.distributed.destroy_process_group()
    return result


@pytest.fixture(scope="module")
def results():
    return [r.value for r in spawn(_worker, 2, timeout=300)]


@pytest.mark.parametrize("case", sorted(ATTN_CASES))
def test_cp_attention_matches_full_sequence(results, case):
    for rank, res in enumerate(results):
        errs = res[case]
        assert errs["out"] < 1e-5, (rank, errs)
        for n in "qkv":
            assert errs[f"grad_{n}"] < 1e-4, (rank, n, errs)


@pytest.mark.parametrize("case", sorted(MAMBA_CASES))
def test_cp_mamba_mixer_matches_one_process(results, case):
    for rank, res in enumerate(results):
        errs = res[case]
        assert errs["heads_local"] == 4 and errs["groups_local"] == 1, errs
        assert errs["out"] < 1e-5 and errs["grad_x"] < 1e-5, (rank, errs)
        assert errs["param_grad_rel"] < 1e-4, (rank, errs)


def test_cp_batch_layout_and_rope(results):
    local_tokens = 0.0
    for res in results:
        lay = res["layout"]
        assert lay["positions_match"], lay
        assert lay["num_tokens"] == lay["full_tokens"], lay  # the loss divides by the whole sequence's count
        assert lay["rope"] == 0.0, lay
        local_tokens += lay["local_tokens"]
    assert local_tokens == results[0]["layout"]["full_tokens"]
