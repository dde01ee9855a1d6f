"""Portable Mamba-2 ops (nemo_reason/ops) against naive per-timestep loops and direct formulas.

The chunked SSD scan runs in float32 and is compared, outputs, final states and every gradient, with the
float64 recurrence `ssd_naive`; decode steps are checked token by token against the sequence versions.
"""

import pytest
import torch
import torch.nn.functional as F

from nemo_reason.ops import (RMSNormGated, causal_conv1d_fn, causal_conv1d_update, mamba_chunk_scan_combined,
                             rmsnorm_fn, selective_state_update, ssd_naive)

TOL = 1e-4
BATCHED = ("x", "dt", "B", "C", "z", "initial_states")


def assert_near(got, want, tol=TOL, what=""):
    """Max abs error, relative to the reference's scale when that exceeds 1."""
    got, want = got.double(), want.double()
    err = (got - want).abs().max().item()
    scale = max(1.0, want.abs().max().item())
    assert err <= tol * scale, f"{what}: max error {err:.3g} (scale {scale:.3g})"


def ssm_inputs(batch=2, seqlen=37, nheads=4, headdim=3, ngroups=2, dstate=5, seed=0, D_per_head=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(
        x=r(batch, seqlen, nheads, headdim), dt=r(batch, seqlen, nheads).abs() * 0.5,
        A=-torch.rand(nheads, generator=g) * 2 - 0.2, B=r(batch, seqlen, ngroups, dstate),
        C=r(batch, seqlen, ngroups, dstate), D=r(nheads) if D_per_head else r(nheads, headdim),
        z=r(batch, seqlen, nheads, headdim), dt_bias=r(nheads) * 0.5 - 1,
        initial_states=r(batch, nheads, headdim, dstate),
    )


def run_with_grads(fn, tensors, flags, weights, dtype):
    """Run fn in `dtype`, backprop a fixed random projection of (y, final_states), return outputs and grads."""
    leaves = {k: v.detach().to(dtype, copy=True).requires_grad_() for k, v in tensors.items()}
    y, final = fn(**leaves, **flags, return_final_states=True)
    ((y * weights[0].to(dtype)).sum() + (final * weights[1].to(dtype)).sum()).backward()
    return y, final, {k: v.grad for k, v in leaves.items()}


CASES = {
    # name: (seqlen, chunk_size, ngroups, tensors used, flags)
    "multiple_of_chunk_plain": (32, 16, 4, ["x", "dt", "A", "B", "C"], {}),
    "ragged_all_options": (37, 16, 2, ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states"],
                           {"dt_softplus": True}),
    "ragged_one_group_D_per_head": (37, 16, 1, ["x", "dt", "A", "B", "C", "D", "initial_states"], {}),
    "dt_limit_clamps": (21, 8, 2, ["x", "dt", "A", "B", "C", "dt_bias"],
                        {"dt_softplus": True, "dt_limit": (0.2, 0.6)}),
    "chunk_longer_than_sequence": (5, 16, 2, ["x", "dt", "A", "B", "C", "z", "initial_states"], {}),
    "chunk_of_one": (7, 1, 2, ["x", "dt", "A", "B", "C", "D", "initial_states"], {"dt_softplus": True}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_chunked_scan_matches_recurrence_outputs_states_and_grads(name):
    seqlen, chunk, ngroups, used, flags = CASES[name]
    full = ssm_inputs(seqlen=seqlen, ngroups=ngroups, D_per_head=name.endswith("D_per_head"), seed=len(name))
    tensors = {k: full[k] for k in used}
    g = torch.Generator().manual_seed(1)
    weights = (torch.randn(full["x"].shape, generator=g), torch.randn(full["initial_states"].shape, generator=g))

    y, final, grads = run_with_grads(lambda **kw: mamba_chunk_scan_combined(chunk_size=chunk, **kw),
                                     tensors, flags, weights, torch.float32)
    y_ref, final_ref, grads_ref = run_with_grads(ssd_naive, tensors, flags, weights, torch.float64)

    assert y.dtype == torch.float32 and y.shape == full["x"].shape
    assert_near(y, y_ref, what="y")
    assert_near(final, final_ref, what="final_states")
    for k in used:
        assert grads[k] is not None and torch.isfinite(grads[k]).all(), k
        assert_near(grads[k], grads_ref[k], what=f"d{k}")


def packed_case():
    t = ssm_inputs(batch=2, seqlen=37, ngroups=2)
    # Row 0: boundaries inside a chunk, exactly at a chunk start (16), and in the padded last chunk.
    # Row 1: a single sequence whose id is not 0, so the initial state must not enter it (mamba-ssm's rule).
    seq_idx = torch.tensor([[0] * 5 + [1] * 11 + [2] * 19 + [3] * 2, [1] * 37], dtype=torch.int32)
    return t, seq_idx


def first_row(t):
    return {k: v[:1] if k in BATCHED else v for k, v in t.items()}


def test_seq_idx_in_float64_is_exact_and_matches_recurrence():
    t, seq_idx = packed_case()
    t = {k: v.double() for k, v in t.items()}
    y, final = mamba_chunk_scan_combined(**t, chunk_size=16, seq_idx=seq_idx, dt_softplus=True,
                                         return_final_states=True)
    y_ref, final_ref = ssd_naive(**t, seq_idx=seq_idx, dt_softplus=True, return_final_states=True)
    assert_near(y, y_ref, tol=1e-10, what="y")
    assert_near(final, final_ref, tol=1e-10, what="final_states")


def test_seq_idx_equals_running_each_packed_sequence_alone():
    t, seq_idx = packed_case()
    t, seq_idx = first_row(t), seq_idx[:1]
    y, final = mamba_chunk_scan_combined(**t, chunk_size=16, seq_idx=seq_idx, dt_softplus=True,
                                         return_final_states=True)
    bounds = [0, 5, 16, 35, 37]
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        part = {k: (v[:, a:b] if k in BATCHED and k != "initial_states" else v) for k, v in t.items()}
        if i > 0:
            part.pop("initial_states")  # only the sequence with id 0 starts from initial_states
        y_alone, final_alone = mamba_chunk_scan_combined(**part, chunk_size=16, dt_softplus=True,
                                                         return_final_states=True)
        assert_near(y[:, a:b], y_alone, what=f"y of sequence {i}")
    assert_near(final, final_alone, what="final state = last sequence's")


def test_seq_idx_gradients_match_recurrence():
    t, seq_idx = packed_case()
    g = torch.Generator().manual_seed(2)
    weights = (torch.randn(t["x"].shape, generator=g), torch.randn(t["initial_states"].shape, generator=g))
    flags = {"seq_idx": seq_idx, "dt_softplus": True}
    y, final, grads = run_with_grads(lambda **kw: mamba_chunk_scan_combined(chunk_size=16, **kw),
                                     t, flags, weights, torch.float32)
    y_ref, final_ref, grads_ref = run_with_grads(ssd_naive, t, flags, weights, torch.float64)
    assert_near(y, y_ref, what="y")
    for k in t:
        assert_near(grads[k], grads_ref[k], what=f"d{k}")


def test_varlen_states_are_each_sequences_final_state():
    t, seq_idx = packed_case()
    t = first_row(t)
    cu_seqlens = torch.tensor([0, 5, 16, 35, 37])
    _, final, varlen = mamba_chunk_scan_combined(**t, chunk_size=16, seq_idx=seq_idx[:1], cu_seqlens=cu_seqlens,
                                                 dt_softplus=True, return_final_states=True,
                                                 return_varlen_states=True)
    assert varlen.shape == (4, *t["initial_states"].shape[1:])
    for i, end in enumerate(cu_seqlens[1:].tolist()):
        prefix = {k: (v[:, :end] if k in BATCHED and k != "initial_states" else v) for k, v in t.items()}
        _, state = ssd_naive(**prefix, seq_idx=seq_idx[:1, :end], dt_softplus=True, return_final_states=True)
        assert_near(varlen[i], state[0], what=f"state after sequence {i}")
    assert_near(varlen[-1], final[0], what="last varlen state = final state")


def test_chunk_size_does_not_change_the_result():
    t = ssm_inputs(seqlen=40)
    ys = [mamba_chunk_scan_combined(**t, chunk_size=c, dt_softplus=True) for c in (4, 8, 64)]
    assert_near(ys[0], ys[1], what="chunk 4 vs 8")
    assert_near(ys[0], ys[2], what="chunk 4 vs 64")


def test_dt_is_biased_then_softplus_then_clamped():
    t = ssm_inputs(seqlen=20)
    dt = t["dt"] - 0.7  # some steps negative
    got = mamba_chunk_scan_combined(**{**t, "dt": dt}, chunk_size=8, dt_softplus=True, dt_limit=(0.2, 0.6))
    manual = F.softplus(dt + t["dt_bias"]).clamp(0.2, 0.6)
    assert_near(got, mamba_chunk_scan_combined(**{**t, "dt": manual, "dt_bias": None}, chunk_size=8), tol=1e-6)
    # The default dt_limit (0, inf) still clamps: a negative dt without softplus counts as 0 (mamba-ssm's kernel).
    raw = mamba_chunk_scan_combined(**{**t, "dt": dt, "dt_bias": None}, chunk_size=8)
    assert_near(raw, mamba_chunk_scan_combined(**{**t, "dt": dt.clamp(min=0), "dt_bias": None}, chunk_size=8),
                tol=1e-6)


def test_bfloat16_inputs_return_bfloat16_outputs_and_float32_states():
    t = {k: v.bfloat16() if k in ("x", "B", "C", "z") else v for k, v in ssm_inputs(seqlen=20).items()}
    y, final = mamba_chunk_scan_combined(**t, chunk_size=8, return_final_states=True)
    assert y.dtype == torch.bfloat16 and final.dtype == torch.float32


def test_bad_shapes_raise():
    t = ssm_inputs(nheads=4, ngroups=3)
    with pytest.raises(ValueError, match="multiple of ngroups"):
        mamba_chunk_scan_combined(**t, chunk_size=8)


def test_selective_state_update_token_by_token_reproduces_chunked_scan():
    batch, seqlen, nheads, headdim, ngroups, dstate = 2, 11, 4, 3, 2, 5
    t = ssm_inputs(batch, seqlen, nheads, headdim, ngroups, dstate, D_per_head=True)
    y, final = mamba_chunk_scan_combined(**t, chunk_size=4, dt_softplus=True, return_final_states=True)

    # Mamba-2 decode passes per-head values expanded over headdim, as Megatron's MambaMixer does.
    A = t["A"][:, None, None].expand(nheads, headdim, dstate)
    D = t["D"][:, None].expand(nheads, headdim)
    dt_bias = t["dt_bias"][:, None].expand(nheads, headdim)
    state = t["initial_states"].clone()
    for i in range(seqlen):
        out = selective_state_update(state, t["x"][:, i], t["dt"][:, i, :, None].expand(batch, nheads, headdim), A,
                                     t["B"][:, i], t["C"][:, i], D=D, z=t["z"][:, i], dt_bias=dt_bias,
                                     dt_softplus=True)
        assert_near(out, y[:, i], what=f"y at step {i}")
    assert_near(state, final, what="state after the last step")


def test_selective_state_update_batch_indices_and_mamba1_shapes():
    g = torch.Generator().manual_seed(3)
    batch, nheads, headdim, dstate = 3, 2, 4, 5
    state = torch.randn(5, nheads, headdim, dstate, generator=g)
    x, dt, z = (torch.randn(batch, nheads, headdim, generator=g) for _ in range(3))
    A = -torch.rand(nheads, headdim, dstate, generator=g)
    B, C = (torch.randn(batch, 1, dstate, generator=g) for _ in range(2))
    idx = torch.tensor([4, -1, 1])
    expected_state = state.clone()
    rows = expected_state[[4, 1]]
    kept = [0, 2]
    want = selective_state_update(rows, x[kept], dt[kept], A, B[kept], C[kept], z=z[kept], dt_softplus=True)
    expected_state[[4, 1]] = rows
    out = selective_state_update(state, x, dt, A, B, C, z=z, dt_softplus=True, state_batch_indices=idx)
    assert_near(out[[0, 2]], want, tol=1e-6, what="indexed rows")
    assert out[1].abs().max() == 0, "a padding row (index -1) outputs 0"
    assert_near(state, expected_state, tol=1e-6, what="indexed state rows")
    assert torch.equal(state[[0, 2, 3]], expected_state[[0, 2, 3]]), "other state rows are untouched"

    # Mamba-1 shapes (no heads axis) equal one head.
    s1 = state[:, 0].clone()
    out1 = selective_state_update(s1[:batch], x[:, 0], dt[:, 0], A[0], B[:, 0], C[:, 0], dt_softplus=True)
    s2 = state[:batch, :1].clone()
    out2 = selective_state_update(s2, x[:, :1], dt[:, :1], A[:1], B, C, dt_softplus=True)
    assert_near(out1, out2[:, 0], tol=1e-6, what="Mamba-1 output")
    assert_near(s1[:batch], s2[:, 0], tol=1e-6, what="Mamba-1 state")


def conv_loop(x, weight, bias, activation, initial_states=None):
    """out[t] = bias + sum_k weight[k] * x[t - (width - 1) + k], one output at a time."""
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    past = torch.zeros(batch, dim, width - 1, dtype=x.dtype) if initial_states is None else initial_states
    xp = torch.cat([past, x], dim=-1)
    outs = []
    for t in range(seqlen):
        o = (xp[:, :, t:t + width] * weight).sum(-1) + (0 if bias is None else bias)
        outs.append(F.silu(o) if activation else o)
    return torch.stack(outs, dim=-1)


@pytest.mark.parametrize("activation,with_bias,with_init", [(None, False, False), ("silu", True, False),
                                                            ("swish", True, True)])
def test_causal_conv1d_matches_loop(activation, with_bias, with_init):
    g = torch.Generator().manual_seed(4)
    batch, dim, seqlen, width = 2, 6, 9, 4
    x, weight = torch.randn(batch, dim, seqlen, generator=g), torch.randn(dim, width, generator=g)
    bias = torch.randn(dim, generator=g) if with_bias else None
    init = torch.randn(batch, dim, width - 1, generator=g) if with_init else None
    out, final = causal_conv1d_fn(x, weight, bias, initial_states=init, return_final_states=True,
                                  activation=activation)
    assert_near(out, conv_loop(x, weight, bias, activation, init), tol=1e-6, what="conv out")
    assert torch.equal(final, x[..., -(width - 1):])
    short, final_short = causal_conv1d_fn(x[..., :2], weight, bias, return_final_states=True, activation=activation)
    assert torch.equal(final_short, F.pad(x[..., :2], (1, 0))), "short sequences left-pad the final state"


def test_causal_conv1d_seq_idx_equals_separate_sequences():
    g = torch.Generator().manual_seed(5)
    dim, width = 5, 4
    x, weight, bias = torch.randn(1, dim, 12, generator=g), torch.randn(dim, width, generator=g), torch.randn(dim)
    seq_idx = torch.tensor([[0] * 2 + [1] * 6 + [2] * 3 + [-1]], dtype=torch.int32)
    out = causal_conv1d_fn(x, weight, bias, seq_idx=seq_idx, activation="silu")
    for a, b in [(0, 2), (2, 8), (8, 11)]:
        assert_near(out[..., a:b], causal_conv1d_fn(x[..., a:b], weight, bias, activation="silu"), tol=1e-6)
    assert out[..., 11].abs().max() == 0, "padding (negative id) outputs 0"
    same = causal_conv1d_fn(x, weight, bias, seq_idx=torch.zeros(1, 12, dtype=torch.int32))
    assert_near(same, causal_conv1d_fn(x, weight, bias), tol=1e-6, what="one sequence")


def test_causal_conv1d_update_token_by_token_reproduces_fn():
    g = torch.Generator().manual_seed(6)
    batch, dim, seqlen, width = 3, 4, 7, 4
    x, weight, bias = torch.randn(batch, dim, seqlen, generator=g), torch.randn(dim, width, generator=g), None
    want = causal_conv1d_fn(x, weight, bias, activation="silu")
    conv_state = torch.zeros(batch, dim, width)  # Megatron keeps d_conv steps, one more than needed
    for t in range(seqlen):
        out = causal_conv1d_update(x[:, :, t], conv_state, weight, bias, "silu")
        assert out.shape == (batch, dim)
        assert_near(out, want[:, :, t], tol=1e-6, what=f"step {t}")
    assert torch.equal(conv_state, x[..., -width:])

    # Several tokens at once, and a state picked by conv_state_indices.
    big_state = torch.zeros(5, dim, width)
    row = torch.tensor([2])
    first = causal_conv1d_update(x[:1, :, :3], big_state, weight, bias, "silu", conv_state_indices=row)
    second = causal_conv1d_update(x[:1, :, 3:], big_state, weight, bias, "silu", conv_state_indices=row)
    assert_near(torch.cat([first, second], -1), want[:1], tol=1e-6, what="multi-token update")
    assert big_state[[0, 1, 3, 4]].abs().max() == 0 and torch.equal(big_state[2], x[0, :, -width:])


def gated_rmsnorm_formula(x, w, z, eps, group_size, norm_before_gate):
    gate = x.new_ones(()) if z is None else z * torch.sigmoid(z)
    v = x if norm_before_gate else x * gate
    parts = torch.split(v, group_size or v.shape[-1], dim=-1)
    normed = torch.cat([p / torch.sqrt((p * p).mean(-1, keepdim=True) + eps) for p in parts], dim=-1) * w
    return normed * gate if norm_before_gate else normed


@pytest.mark.parametrize("norm_before_gate", [True, False])
@pytest.mark.parametrize("group_size", [None, 4])
def test_gated_rmsnorm_matches_formula(norm_before_gate, group_size):
    g = torch.Generator().manual_seed(7)
    x, z = torch.randn(3, 5, 12, generator=g) * 3, torch.randn(3, 5, 12, generator=g)
    norm = RMSNormGated(12, eps=1e-5, group_size=group_size, norm_before_gate=norm_before_gate)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(12, generator=g))
    want = gated_rmsnorm_formula(x, norm.weight.detach(), z, 1e-5, group_size, norm_before_gate)
    assert_near(norm(x, z), want, tol=1e-6, what="gated")
    assert_near(norm(x), gated_rmsnorm_formula(x, norm.weight.detach(), None, 1e-5, group_size, True), tol=1e-6)
    assert_near(rmsnorm_fn(x, norm.weight, None, z=z, eps=1e-5, group_size=group_size,
                           norm_before_gate=norm_before_gate), want, tol=1e-6, what="rmsnorm_fn")


def test_rmsnorm_module_keys_dtype_and_groups_matter():
    norm = RMSNormGated(8, group_size=4, dtype=torch.bfloat16)
    assert list(norm.state_dict()) == ["weight"] and norm.weight.dtype == torch.bfloat16
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    assert norm(x, torch.randn_like(x)).dtype == torch.bfloat16
    x = torch.cat([torch.ones(1, 4), 10 * torch.ones(1, 4)], dim=-1)
    assert torch.allclose(rmsnorm_fn(x, torch.ones(8), group_size=4), torch.ones(1, 8), atol=1e-4)
    assert not torch.allclose(rmsnorm_fn(x, torch.ones(8)), torch.ones(1, 8), atol=1e-2)
