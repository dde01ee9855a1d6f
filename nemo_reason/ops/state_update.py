"""One decode step of the selective SSM, in plain PyTorch, with mamba-ssm's `selective_state_update` interface.

For each head h (group g = h // (nheads // ngroups)), channel p and state index n:

    dt        = softplus(dt + dt_bias) if dt_softplus else dt + dt_bias
    state     = exp(dt * A) * state + dt * B[g] * x                  (updated in place)
    out       = (state @ C[g] + D * x) * silu(z)

Mamba-2 calls it with per-head quantities expanded over headdim (dt (batch, nheads, headdim), A
(nheads, headdim, dstate), dt_bias and D (nheads, headdim)), so the same code serves Mamba-1, whose
shapes have no heads axis: state (batch, dim, dstate), x/dt/z (batch, dim), A (dim, dstate), B/C
(batch, dstate), D/dt_bias (dim,). Unlike the chunked scan, mamba-ssm applies no dt_limit here.

`state_batch_indices` (batch,) maps batch row i to state row state_batch_indices[i] (continuous batching);
a negative index marks a padding row, whose state is untouched and whose output is 0, as in the Triton kernel.
Math runs in float32 (or wider); the state keeps its dtype and out comes back in x's dtype.
Left out: nothing of the interface; the speed of the fused kernel.

Shapes (Mamba-2): state (batch, nheads, headdim, dstate), x (batch, nheads, headdim), dt like x,
A (nheads, headdim, dstate), B/C (batch, ngroups, dstate), D (nheads, headdim), z like x, dt_bias (nheads, headdim).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _add_heads_axis(state, x, dt, A, B, C, D, z, dt_bias):
    """Mamba-1 shapes -> Mamba-2 shapes with one head."""
    return (state[:, None], x[:, None], dt[:, None], A[None], B[:, None], C[:, None],
            None if D is None else D[None], None if z is None else z[:, None],
            None if dt_bias is None else dt_bias[None])


def _check_shapes(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices):
    _, nheads, headdim, dstate = state.shape
    batch, ngroups = x.shape[0], B.shape[1]
    if nheads % ngroups:
        raise ValueError(f"nheads ({nheads}) must be a multiple of ngroups ({ngroups})")
    expected = {"x": (x, (batch, nheads, headdim)), "dt": (dt, (batch, nheads, headdim)),
                "A": (A, (nheads, headdim, dstate)), "B": (B, (batch, ngroups, dstate)),
                "C": (C, (batch, ngroups, dstate)), "D": (D, (nheads, headdim)), "z": (z, (batch, nheads, headdim)),
                "dt_bias": (dt_bias, (nheads, headdim)), "state_batch_indices": (state_batch_indices, (batch,))}
    for name, (t, shape) in expected.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")
    if state_batch_indices is None and state.shape[0] != batch:
        raise ValueError(f"state has batch {state.shape[0]}, x has {batch}")


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           state_batch_indices=None):
    """Advance `state` by one token in place and return that token's output, shaped like x."""
    has_heads = state.dim() == 4
    if not has_heads:  # state[:, None] is a view, so the in-place writes below still reach the caller's state
        state, x, dt, A, B, C, D, z, dt_bias = _add_heads_axis(state, x, dt, A, B, C, D, z, dt_bias)
    _check_shapes(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices)
    f = torch.promote_types(x.dtype, torch.float32)

    if state_batch_indices is None:
        rows = valid = None
        s = state.to(f)
    else:
        valid = state_batch_indices >= 0                                             # padding rows have -1
        rows = state_batch_indices.long().clamp(min=0)
        s = state[rows].to(f)

    dt = dt.to(f) if dt_bias is None else dt.to(f) + dt_bias.to(f)
    if dt_softplus:
        dt = F.softplus(dt)
    heads_per_group = x.shape[1] // B.shape[1]
    B_h, C_h = (t.to(f).repeat_interleave(heads_per_group, dim=1) for t in (B, C))  # (batch, nheads, dstate)
    xf = x.to(f)
    s = torch.exp(dt[..., None] * A.to(f)) * s + (dt * xf)[..., None] * B_h[:, :, None, :]   # (b, h, p, n)
    out = torch.einsum("bhpn,bhn->bhp", s, C_h)
    if D is not None:
        out = out + D.to(f) * xf
    if z is not None:
        out = out * F.silu(z.to(f))

    if rows is None:
        state.copy_(s)
    else:
        state.index_copy_(0, rows[valid], s[valid].to(state.dtype))
        out = out * valid[:, None, None]
    out = out.to(x.dtype)
    return out if has_heads else out[:, 0]
