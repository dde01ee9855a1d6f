"""The fused logit KL of nemo_reason.compress.distill equals modelopt's ``LogitsKLLoss`` and a plain
torch reference, value and gradient, within 1e-6.

TP=1: against modelopt's loss itself (same config object, same temperatures), with a non-uniform
upstream gradient per token (a loss mask and weights), and the student's logits left unmodified
(the teacher's are consumed). TP=2 (two
real gloo ranks, vocabulary split in halves): the ranks' partial sums add up to the full-vocabulary
torch KL and each rank's gradient is its slice of the full gradient, again under a non-uniform
upstream gradient (which differs per rank only through its values, as the backward's all-reduce
must handle). The whole distill step under TP=2 is tests/distributed/test_distill_parity.py.
"""

from __future__ import annotations

import pytest
import torch

from tests.spawn import spawn

S, B, V = 7, 3, 301


def _logits(seed: int, vocab: int = V):
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(S, B, vocab, generator=g) * 3.0).requires_grad_(True)
    teacher = torch.randn(S, B, vocab, generator=g) * 4.0
    weight = torch.rand(S, B, generator=g)  # per-token upstream gradient, [s, b]
    return student, teacher, weight


def _reference(student, teacher, temperature):
    log_ps = torch.log_softmax(student.double() / temperature, dim=-1)
    log_pt = torch.log_softmax(teacher.double() / temperature, dim=-1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(-1)  # [s, b]


def _config():
    from megatron.core.transformer import TransformerConfig

    return TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=1, tensor_model_parallel_size=1)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_fused_kl_equals_modelopt_at_tp1(temperature):
    from modelopt.torch.distill.plugins.megatron import LogitsKLLoss

    from nemo_reason.compress.distill import FusedLogitsKLLoss

    cfg = _config()
    student, teacher, weight = _logits(0)
    s0, t0 = student.detach().clone(), teacher.clone()
    out = {}
    for name, loss_fn in (("ours", FusedLogitsKLLoss(cfg, temperature)), ("modelopt", LogitsKLLoss(cfg, temperature))):
        student.grad = None
        loss, tp_reduce, seq_parallel = loss_fn(student, teacher.clone())
        assert loss.shape == (B, S) and tp_reduce and not seq_parallel
        (loss * weight.t()).sum().backward()
        out[name] = (loss.detach(), student.grad.clone())
    assert torch.equal(student.detach(), s0) and torch.equal(teacher, t0)  # the student's logits untouched
    (kl, grad), (kl_m, grad_m) = out["ours"], out["modelopt"]
    assert kl.min() > 0.1  # a real KL, far from 0
    torch.testing.assert_close(kl, kl_m, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, grad_m, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(kl.double(), _reference(student, teacher, temperature).t(), rtol=1e-6, atol=1e-6)


def test_fused_kl_of_equal_logits_is_zero():
    from nemo_reason.compress.distill import FusedLogitsKLLoss

    student, _, _ = _logits(1)
    loss, _, _ = FusedLogitsKLLoss(_config(), 1.0)(student, student.detach().clone())
    loss.sum().backward()
    assert loss.abs().max() < 1e-6 and student.grad.abs().max() < 1e-6


def _tp2_rank(rank, temperature):
    import torch.distributed as dist

    from nemo_reason.backend import dist as bdist
    from nemo_reason.compress.distill import _LogitsKL

    torch.set_num_threads(1)
    bdist.init_process_group()
    try:
        student, teacher, weight = _logits(2)
        weight = weight * (1.0 + rank)  # upstream gradients that differ per rank
        half = V // 2 + 1  # unequal shards: 151 + 150
        lo, hi = (0, half) if rank == 0 else (half, V)
        shard = student.detach()[..., lo:hi].clone().requires_grad_(True)
        kl = _LogitsKL.apply(shard, teacher[..., lo:hi].clone(), temperature, dist.group.WORLD, 2)
        (kl * weight).sum().backward()
        total = kl.detach().clone()
        dist.all_reduce(total)
        # The reference: sum over ranks of weight_r * KL_r, whose parts add to the full KL.
        ref = _reference(student, teacher, temperature)
        w_all = [torch.empty_like(weight) for _ in range(2)]
        dist.all_gather(w_all, weight)
        log_ps = torch.log_softmax(student.double() / temperature, dim=-1)
        log_pt = torch.log_softmax(teacher.double() / temperature, dim=-1)
        objective = sum((w.double() * (log_pt.exp() * (log_pt - log_ps))[..., a:b].sum(-1)).sum()
                        for w, (a, b) in zip(w_all, ((0, half), (half, V))))
        ref_grad, = torch.autograd.grad(objective, student)
        return {"total_err": (total.double() - ref).abs().max().item(), "ref_min": ref.min().item(),
                "grad_err": (shard.grad.double() - ref_grad[..., lo:hi]).abs().max().item(),
                "grad_scale": ref_grad.abs().max().item()}
    finally:
        bdist.destroy_process_group()


@pytest.mark.slow  # two more processes; the default suite checks TP=2 through tests/distributed/test_distill_parity.py
def test_fused_kl_under_tp2_equals_full_vocabulary():
    results = spawn(_tp2_rank, 2, args=(2.0,), timeout=120)
    for r in results:
        v = r.value
        assert v["ref_min"] > 0.05 and v["grad_scale"] > 1e-3, v
        assert v["total_err"] < 1e-6 and v["grad_err"] < 1e-6, v


def test_blocks_and_workspace_change_no_bit(monkeypatch):
    """The KL runs block by block with the student's log-softmax in a reused workspace: blocks of 2
    rows (a ragged last one) give the same bits as one block, the workspace is the same buffer
    from one forward/backward to the next, and a second forward before its backward gets its own."""
    import nemo_reason.compress.distill as cd

    student, teacher, weight = _logits(3)

    def run(workspace=None):
        s = student.detach().clone().requires_grad_(True)
        kl = cd._LogitsKL.apply(s, teacher.clone(), 2.0, None, 1, workspace)
        (kl * weight).sum().backward()
        return kl.detach(), s.grad

    one = run()
    monkeypatch.setattr(cd, "BLOCK_ELEMS", 2 * V)
    assert len(cd._blocks(S * B, V)) == 11  # 21 rows in blocks of 2
    ws = cd.Workspace()
    for _ in range(2):
        kl, grad = run(ws)
        assert torch.equal(kl, one[0]) and torch.equal(grad, one[1])
    buffer = ws._buffer
    assert buffer is not None and not ws._busy
    s1, s2 = (student.detach().clone().requires_grad_(True) for _ in range(2))
    k1 = cd._LogitsKL.apply(s1, teacher.clone(), 2.0, None, 1, ws)
    k2 = cd._LogitsKL.apply(s2, teacher.clone(), 2.0, None, 1, ws)  # the workspace is taken: a new tensor
    (k2 * weight).sum().backward()
    (k1 * weight).sum().backward()
    assert ws._buffer is buffer and not ws._busy
    assert torch.equal(s1.grad, one[1]) and torch.equal(s2.grad, one[1])
    with torch.no_grad():  # no backward to come: the workspace is not taken
        cd._LogitsKL.apply(student.detach(), teacher.clone(), 2.0, None, 1, ws)
    assert not ws._busy


def test_glibc_keeps_freed_memory():
    """The distill step's allocator setting takes effect on this (Linux, glibc, CPU) machine."""
    import platform

    from nemo_reason.backend.allocator import keep_freed_memory

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert keep_freed_memory() is True
