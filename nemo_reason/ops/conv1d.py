"""Depthwise causal 1-D convolution (Mamba's short conv) in plain PyTorch, with causal-conv1d's interface.

`causal_conv1d_fn` convolves each channel with its own `width`-tap filter over the past: out[t] = bias +
sum_k weight[k] * x[t - (width - 1) + k], x left-padded with zeros (or with `initial_states`), then an optional
silu. With `seq_idx` (packed sequences) taps that reach into another sequence count as zero and positions with
a negative id (padding) output 0, as the causal-conv1d kernel does. `causal_conv1d_update` is the decode step:
it appends the new token(s) to a rolling `conv_state` (updated in place) and returns their outputs.

Like causal-conv1d: seq_idx excludes initial_states and return_final_states; math runs in weight's dtype and
the output comes back in x's dtype. Left out: the circular-buffer `cache_seqlens` of `causal_conv1d_update`
(NotImplementedError) and causal-conv1d's channel-last layout requirements, which do not apply here.

Shapes: x (batch, dim, seqlen), weight (dim, width), bias (dim,), seq_idx (batch, seqlen),
initial_states / final states (batch, dim, width - 1); update: x (batch, dim) or (batch, dim, seqlen),
conv_state (batch, dim, state_len) with state_len >= width - 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _activate(out, activation):
    return out if activation is None else F.silu(out)


def _check_activation(activation):
    if activation not in (None, "silu", "swish"):
        raise NotImplementedError(f"activation must be None, 'silu' or 'swish', not {activation!r}")


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None):
    """out (batch, dim, seqlen); (out, final_states) with return_final_states (written into final_states_out if
    given): the last width - 1 inputs, zero-padded on the left when the sequence is shorter."""
    _check_activation(activation)
    if seq_idx is not None and (initial_states is not None or return_final_states):
        raise ValueError("seq_idx excludes initial_states and return_final_states (as in causal-conv1d)")
    dim, width = weight.shape
    batch, _, seqlen = x.shape
    xw = x.to(weight.dtype)
    if initial_states is None:
        padded = F.pad(xw, (width - 1, 0))                                          # (b, d, width - 1 + seqlen)
    else:
        padded = torch.cat([initial_states.to(weight.dtype), xw], dim=-1)

    if seq_idx is None:
        out = F.conv1d(padded, weight[:, None, :], bias, groups=dim)
    else:
        # Windows over the past, with the taps outside the current sequence zeroed (-1 marks "before the start").
        windows = padded.unfold(-1, width, 1)                                       # (b, d, seqlen, width)
        seq_win = F.pad(seq_idx, (width - 1, 0), value=-1).unfold(-1, width, 1)      # (b, seqlen, width)
        same = (seq_win == seq_idx[..., None]).to(windows.dtype)
        out = torch.einsum("bdlw,blw,dw->bdl", windows, same, weight)
        if bias is not None:
            out = out + bias[:, None]
    out = _activate(out, activation)
    if seq_idx is not None:
        out = out.masked_fill((seq_idx < 0)[:, None, :], 0.0)
    out = out.to(x.dtype)
    if not return_final_states:
        return out
    final = padded[..., padded.shape[-1] - (width - 1):].to(x.dtype)               # (b, d, width - 1)
    if final_states_out is not None:
        final = final_states_out.copy_(final)
    return out, final


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                         conv_state_indices=None):
    """Decode step. x (batch, dim) or (batch, dim, seqlen); conv_state is shifted left by seqlen and the new
    inputs written at its end, in place (rows conv_state_indices[i] for batch row i when given).
    Returns the outputs for the new positions, shaped like x."""
    _check_activation(activation)
    if cache_seqlens is not None:
        raise NotImplementedError("causal_conv1d_update: the circular-buffer cache_seqlens mode is not ported")
    dim, width = weight.shape
    squeeze = x.dim() == 2
    if squeeze:
        x = x[..., None]
    seqlen = x.shape[-1]
    state = conv_state if conv_state_indices is None else conv_state[conv_state_indices.long()]
    state_len = state.shape[-1]
    if state_len < width - 1:
        raise ValueError(f"conv_state holds {state_len} steps, fewer than width - 1 = {width - 1}")

    joined = torch.cat([state.to(weight.dtype), x.to(weight.dtype)], dim=-1)     # (b, d, state_len + seqlen)
    new_state = joined[..., -state_len:].to(conv_state.dtype)
    if conv_state_indices is None:
        conv_state.copy_(new_state)
    else:
        conv_state.index_copy_(0, conv_state_indices.long(), new_state)
    out = F.conv1d(joined[..., -(width - 1 + seqlen):], weight[:, None, :], bias, groups=dim)   # (b, d, seqlen)
    out = _activate(out, activation).to(x.dtype)
    return out[..., 0] if squeeze else out
