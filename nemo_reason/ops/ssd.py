"""The Mamba-2 selective scan (SSD) in plain PyTorch: the chunked algorithm and the recurrence it equals.

Per head h (with group g = h // (nheads // ngroups)) and time t, with a state S_t of shape (headdim, dstate):

    dt_t = clamp(softplus(dt_t + dt_bias) if dt_softplus else dt_t + dt_bias, *dt_limit)
    S_t  = exp(dt_t * A_h) * S_{t-1} + dt_t * outer(x_t, B_t[g])       S_{-1} = initial_states (or 0)
    y_t  = (S_t @ C_t[g] + D_h * x_t) * silu(z_t)

`ssd_naive` runs this loop one time step at a time; it is the reference the tests and the benchmark use.
`mamba_chunk_scan_combined` computes the same thing with the chunked SSD algorithm (Dao & Gu, 2024,
"Transformers are SSMs", listing 1; mamba-ssm's `ssd_minimal.py`), in einsums, differentiable by autograd:
split the sequence into chunks of `chunk_size`; inside a chunk, outputs are a masked (decay-weighted)
attention-like product; across chunks, only the (headdim, dstate) states travel, through a short recurrence.
Cost is linear in the sequence length (quadratic in chunk_size).

Signature and semantics follow mamba-ssm's Triton `mamba_chunk_scan_combined`: dt is clamped to dt_limit
after bias and softplus (so with the default (0, inf) a negative dt without softplus becomes 0); seqlen need
not be a multiple of chunk_size (we pad with dt = 0, which neither decays nor feeds the state, so final states
are exact); `seq_idx` (batch, seqlen), non-decreasing per row, marks packed sequences and no state flows
between positions with different ids; `initial_states` belongs to the sequence with id 0, as in mamba-ssm.
Math runs in float32 (float64 if x is float64); y comes back in x's dtype, final states in float32/64.

Left out: mamba-ssm's fused backward and its memory savings (autograd keeps a few (chunk, chunk) matrices per
chunk and head); step 3 is the quadratic-in-chunks einsum of `ssd_minimal.py`, not a sequential pass (cheap
below a few hundred chunks); `state_dtype` is accepted and ignored; `return_varlen_states` needs batch 1,
as in mamba-ssm. On the CPU a chunk_size near dstate (64) is fastest; see benchmarks/bench_ssd_scan.py.

Shapes: x (batch, seqlen, nheads, headdim), dt (batch, seqlen, nheads), A (nheads,),
B/C (batch, seqlen, ngroups, dstate), D (nheads, headdim) or (nheads,), z like x, dt_bias (nheads,),
initial_states and final states (batch, nheads, headdim, dstate).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

INF = float("inf")


def discretize_dt(dt, dt_bias=None, dt_softplus=False, dt_limit=(0.0, INF)):
    """dt (batch, seqlen, nheads) -> the step actually used, in float32 or wider, as mamba-ssm computes it."""
    dt = dt.to(torch.promote_types(dt.dtype, torch.float32))
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt)  # identity above 20, like mamba-ssm's kernel
    return dt.clamp(min=dt_limit[0], max=dt_limit[1])


def _check_shapes(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx):
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[-2:]
    if nheads % ngroups:
        raise ValueError(f"nheads ({nheads}) must be a multiple of ngroups ({ngroups})")
    expected = {"dt": (dt, (batch, seqlen, nheads)), "A": (A, (nheads,)),
                "B": (B, (batch, seqlen, ngroups, dstate)), "C": (C, (batch, seqlen, ngroups, dstate)),
                "z": (z, tuple(x.shape)), "dt_bias": (dt_bias, (nheads,)),
                "initial_states": (initial_states, (batch, nheads, headdim, dstate)),
                "seq_idx": (seq_idx, (batch, seqlen))}
    for name, (t, shape) in expected.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")
    if D is not None and tuple(D.shape) not in ((nheads, headdim), (nheads,)):
        raise ValueError(f"D has shape {tuple(D.shape)}, expected ({nheads}, {headdim}) or ({nheads},)")


def _skip_and_gate(y, x, D, z):
    """y + D * x, then * silu(z): the part of the output that is not the scan."""
    if D is not None:
        y = y + x * (D if D.dim() == 2 else D[:, None]).to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def segsum(a, same=None):
    """a (..., T) -> (..., T, T): out[i, j] = a[j+1] + ... + a[i] for j <= i, and -inf above the diagonal
    (or where `same` is False), so that exp(out) is the decay from step j to step i.

    Sums each segment directly instead of differencing a running cumsum: the chunk-level decays summed over
    a long sequence grow large, and cumsum(a)[i] - cumsum(a)[j] would lose the small differences in float32.
    """
    T = a.shape[-1]
    below = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    out = a[..., :, None].expand(*a.shape, T).masked_fill(~below, 0).cumsum(dim=-2)  # sum over i of a[i], i > j
    keep = below | torch.eye(T, dtype=torch.bool, device=a.device)
    if same is not None:
        keep = keep & same
    return out.masked_fill(~keep, -INF)


def ssd_chunked(x, dA, B, C, chunk_size, initial_states=None, seq_idx=None):
    """The chunked SSD core, on inputs already discretised and padded to whole chunks.

    x: (b, L, h, p), already multiplied by dt; dA = dt * A: (b, L, h); B, C: (b, L, g, n); L % chunk_size == 0;
    seq_idx: (b, L) or None. Returns y (b, L, h, p) without D and z, and the states at the chunk boundaries
    (b, h, c + 1, p, n): boundary k is the state after chunk k - 1, boundary 0 the initial state.
    """
    b, L, h, p = x.shape
    g, n = B.shape[-2:]
    c, l = L // chunk_size, chunk_size
    # Head-major chunks (b, h, c, l, ...): each einsum below is then one batched matmul over (b, h, c).
    x = x.transpose(1, 2).reshape(b, h, c, l, p)
    B, C = (t.transpose(1, 2).reshape(b, g, c, l, n) for t in (B, C))
    A_cum = dA.transpose(1, 2).reshape(b, h, c, l).cumsum(dim=-1)                  # (b, h, c, l), restarts per chunk

    # Sequence ids, to keep packed sequences apart (all 0 without seq_idx).
    seq = torch.zeros(b, c, l, dtype=torch.long, device=x.device) if seq_idx is None else seq_idx.long()
    seq = seq.reshape(b, 1, c, l)                                                   # (b, 1, c, l): 1 for heads
    seq_bd = F.pad(seq[..., -1], (1, 0))         # (b, 1, c + 1): the id at each boundary, 0 for the initial state

    # 1. Diagonal blocks, inputs to outputs within a chunk: y[l] = sum_{s<=l} C[l].B[s] exp(A_cum[l]-A_cum[s]) x[s]
    causal = torch.ones(l, l, dtype=torch.bool, device=x.device).tril()
    same = seq[..., :, None] == seq[..., None, :]                                   # (b, 1, c, l, s)
    # 0 where s feeds l, -inf elsewhere; added in log space, so exp gives exact zeros, and backward has no mask
    cut = torch.zeros(same.shape, dtype=x.dtype, device=x.device).masked_fill_(~(causal & same), -INF)
    decay = (A_cum[..., :, None] + cut).sub_(A_cum[..., None, :]).exp_()           # (b, h, c, l, s)
    CB = torch.einsum("bgcln,bgcsn->bgcls", C, B)                                  # (b, g, c, l, s), once per group
    scores = (CB[:, :, None] * decay.unflatten(1, (g, h // g))).flatten(1, 2)       # (b, h, c, l, s)
    y_diag = torch.einsum("bhcls,bhcsp->bhclp", scores, x)

    # 2. Each chunk's own contribution to the state at its end (right factor of the off-diagonal blocks)
    to_end = (A_cum[..., -1:] - A_cum).masked_fill(seq != seq[..., -1:], -INF)      # (b, h, c, l)
    B_to_end = (B[:, :, None] * torch.exp(to_end).unflatten(1, (g, h // g))[..., None]).flatten(1, 2)
    states = torch.einsum("bhcln,bhclp->bhcpn", B_to_end, x)                        # (b, h, c, p, n)

    # 3. Inter-chunk recurrence: the state at every boundary from the initial state and all earlier chunks
    if initial_states is None:
        initial_states = torch.zeros_like(states[:, :, 0])
    states = torch.cat([initial_states[:, :, None].to(states.dtype), states], dim=2)  # (b, h, c + 1, p, n)
    chunk_decay = F.pad(A_cum[..., -1], (1, 0))                                     # (b, h, c + 1), 0 before chunk 0
    same_bd = seq_bd[..., :, None] == seq_bd[..., None, :]                          # (b, 1, c + 1, c + 1)
    states = torch.einsum("bhzk,bhkpn->bhzpn", torch.exp(segsum(chunk_decay, same_bd)), states)

    # 4. State -> output: the state entering each chunk, decayed to each position and read out by C
    from_start = A_cum.masked_fill(seq != seq_bd[..., :-1, None], -INF)             # (b, h, c, l)
    C_from_start = (C[:, :, None] * torch.exp(from_start).unflatten(1, (g, h // g))[..., None]).flatten(1, 2)
    y_off = torch.einsum("bhcln,bhcpn->bhclp", C_from_start, states[:, :, :-1])     # (b, h, c, l, p)

    return (y_diag + y_off).reshape(b, h, L, p).transpose(1, 2), states


def _states_at(positions, x, dA, B, chunk_size, states, seq_idx):
    """The SSM state right after each of `positions` (k,), batch 1: the state entering the position's chunk,
    decayed, plus that chunk's inputs up to the position (same sequence only). Returns (k, h, p, n)."""
    h, g = x.shape[2], B.shape[2]
    x, B = x[0].unflatten(0, (-1, chunk_size)), B[0].repeat_interleave(h // g, dim=1).unflatten(0, (-1, chunk_size))
    A_cum = dA[0].unflatten(0, (-1, chunk_size)).cumsum(dim=1)                     # (c, l, h)
    seq = seq_idx[0].long().unflatten(0, (-1, chunk_size))                          # (c, l)
    seq_bd = F.pad(seq[:, -1], (1, 0))
    ci, li = positions // chunk_size, positions % chunk_size
    a_t = A_cum[ci, li]                                                             # (k, h)
    s = torch.arange(chunk_size, device=x.device)
    keep = (s[None] <= li[:, None]) & (seq[ci] == seq[ci, li][:, None])             # (k, l)
    w = torch.exp((a_t[:, None] - A_cum[ci]).masked_fill(~keep[..., None], -INF))   # (k, l, h)
    own = torch.einsum("klh,klhn,klhp->khpn", w, B[ci], x[ci])
    carried = torch.exp(a_t) * (seq[ci, li] == seq_bd[ci])[:, None]                 # (k, h)
    return own + carried[..., None, None] * states[0, :, ci].transpose(0, 1)


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                              seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, INF),
                              return_final_states=False, return_varlen_states=False, state_dtype=None):
    """mamba-ssm's `mamba_chunk_scan_combined`, chunked SSD in PyTorch. Returns y (like x); (y, final_states) with
    return_final_states; the per-sequence final states (nseq, nheads, headdim, dstate) of a packed batch of one
    are appended with return_varlen_states (needs cu_seqlens (nseq + 1,) and seq_idx)."""
    _check_shapes(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx)
    batch, seqlen, nheads, headdim = x.shape
    f = torch.promote_types(x.dtype, torch.float32)
    dt = discretize_dt(dt, dt_bias, dt_softplus, dt_limit).to(f)
    xf, Bf, Cf = x.to(f), B.to(f), C.to(f)
    xdt, dA = xf * dt[..., None], dt * A.to(f)

    # Pad to whole chunks with dt = 0 (no decay, no input) and the last sequence id (no new sequence).
    pad = -seqlen % chunk_size
    if pad:
        xdt, Bp, Cp = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xdt, Bf, Cf))
        dA = F.pad(dA, (0, 0, 0, pad))
        if seq_idx is not None:
            seq_idx = torch.cat([seq_idx, seq_idx[:, -1:].expand(batch, pad)], dim=1)
    else:
        Bp, Cp = Bf, Cf
    y, states = ssd_chunked(xdt, dA, Bp, Cp, chunk_size, initial_states, seq_idx)
    y = _skip_and_gate(y[:, :seqlen], xf, D, z).to(x.dtype)

    out = (y, states[:, :, -1]) if return_final_states else (y,)
    if return_varlen_states:
        if batch != 1 or cu_seqlens is None or seq_idx is None:
            raise ValueError("return_varlen_states needs batch 1, cu_seqlens and seq_idx (as in mamba-ssm)")
        out = (*out, _states_at(cu_seqlens[1:].long() - 1, xdt, dA, Bp, chunk_size, states, seq_idx))
    return out[0] if len(out) == 1 else out


def ssd_naive(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_states=None, seq_idx=None,
              dt_softplus=False, dt_limit=(0.0, INF), return_final_states=False):
    """The reference: the recurrence one time step at a time (same arguments and returns as the chunked scan)."""
    _check_shapes(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx)
    batch, seqlen, nheads, headdim = x.shape
    f = torch.promote_types(x.dtype, torch.float32)
    dt = discretize_dt(dt, dt_bias, dt_softplus, dt_limit).to(f)                   # (b, L, h)
    xf = x.to(f)
    B_h, C_h = (t.to(f).repeat_interleave(nheads // B.shape[2], dim=2) for t in (B, C))   # (b, L, h, n)
    state = (torch.zeros(batch, nheads, headdim, B.shape[-1], dtype=f, device=x.device)
             if initial_states is None else initial_states.to(f))
    ys = []
    # unbind, not x[:, t]: each x[:, t] would cost a full-size zero gradient in backward (quadratic in seqlen)
    steps = zip(dt.unbind(1), xf.unbind(1), B_h.unbind(1), C_h.unbind(1))         # (b, h), (b, h, p), (b, h, n) x2
    for t, (dt_t, x_t, B_t, C_t) in enumerate(steps):
        if seq_idx is not None:  # a new packed sequence starts from a zero state
            prev = seq_idx[:, t - 1] if t else torch.zeros_like(seq_idx[:, 0])
            state = state * (seq_idx[:, t] == prev).to(f)[:, None, None, None]
        decay = torch.exp(dt_t * A.to(f))                                           # (b, h)
        state = state * decay[..., None, None] + (dt_t[..., None] * x_t)[..., None] * B_t[:, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C_t))
    y = _skip_and_gate(torch.stack(ys, dim=1), xf, D, z).to(x.dtype)
    return (y, state) if return_final_states else y
