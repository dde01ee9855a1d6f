"""Policy losses on per-token log-probs, the aggregation of per-token losses into one scalar, and the
entropy of a token distribution.

Shapes: ``logprobs [B, T]`` (the policy being trained, with gradient), ``old_logprobs [B, T]`` (the
rollout's log-probs of the same tokens, no gradient), ``advantages [B]`` (one per sample, broadcast over
its tokens; ``[B, T]`` is accepted too), ``mask [B, T]`` (1 on response tokens, 0 on prompt and padding).
Every loss is ``fn(logprobs, old_logprobs, advantages, mask, **options) -> (loss, metrics)``: ``loss`` a
scalar to call ``backward()`` on, ``metrics`` maps names to detached ``[sum, count]`` tensors of this
micro-batch, the convention of :mod:`nemo_reason.training.step` (``reduce_metrics`` adds them over
micro-batches and ranks and divides once):

- ``policy_loss``: ``[numerator, denominator]`` of the aggregation (see :func:`aggregate`);
- ``clip_frac``: tokens whose clipped branch was taken (zero gradient) / tokens; ``clip_frac_low``
  (ratio under ``1 - clip_low`` with a negative advantage) and ``clip_frac_high`` (ratio over
  ``1 + clip_high`` with a positive one) split it; ``dual_clip_frac`` when the dual clip is on;
- ``ratio_mean``: the mean of ``pi / pi_old`` over tokens;
- ``approx_kl``: ``KL(pi_old || pi)`` estimated per token with k3, ``r - 1 - log r``, ``r = pi / pi_old``;
- ``tokens``: ``[response tokens, 1]`` (its mean is tokens per micro-batch); ``response_length``:
  ``[response tokens, sequences]``.

The log ratio is clamped to ``[-20, 20]`` before ``exp``. Left out: KL to a reference (add
:func:`nemo_reason.rl.kl.kl_penalty` through :func:`aggregate`), importance-sampling correction between
rollout and trainer engines, value losses, an entropy bonus (:func:`entropy_from_logits` with a
tensor-parallel group is a metric, without gradient).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from nemo_reason.rl import POLICY_LOSSES

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
LOG_RATIO_CLAMP = 20.0

Metrics = Dict[str, torch.Tensor]


def _up(x: torch.Tensor) -> torch.Tensor:
    """At least fp32, so that sums over many tokens keep their precision (fp64 stays fp64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _pair(num: torch.Tensor, den) -> torch.Tensor:
    num = num.detach()
    return torch.stack([num, torch.as_tensor(den, dtype=num.dtype, device=num.device).detach()])


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean", *,
              max_len: Optional[int] = None, denominator=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reduce per-token ``values [B, T]`` over the response tokens ``mask [B, T]`` to a scalar.

    With ``n_b = sum_t mask[b, t]`` and ``S`` the sequences with ``n_b > 0``:

    - ``token-mean``: ``sum_{b,t} m v / sum_b n_b`` (every token weighs the same; DAPO);
    - ``seq-mean-token-sum``: ``sum_b (sum_t m v) / |S|``;
    - ``seq-mean-token-mean``: ``sum_b (sum_t m v / n_b) / |S|`` (every sequence weighs the same; GRPO);
    - ``seq-mean-token-sum-norm``: ``sum_{b,t} m v / (|S| * max_len)`` (Dr.GRPO: a constant length
      ``max_len``, ``T`` if not given, so no length bias; verl divides by ``max_len`` only, which differs
      by the constant batch size).

    Returns ``(loss, [numerator, denominator])`` with the pair detached. ``denominator`` replaces this
    micro-batch's own divisor (e.g. the token count over all micro-batches and data-parallel ranks, for a
    global token mean, or over the whole sequence under context parallelism); the pair keeps the local one.
    """
    if values.shape != mask.shape:
        raise ValueError(f"aggregate: values {tuple(values.shape)} and mask {tuple(mask.shape)} differ; both "
                         f"are per-token [B, T]")
    if values.dim() != 2:
        raise ValueError(f"aggregate: values must be [B, T], got shape {tuple(values.shape)}")
    m = mask.to(values.dtype)
    masked = values * m
    if mode == "token-mean":
        num, den = masked.sum(), m.sum()
    elif mode in AGG_MODES:
        tokens = m.sum(dim=-1)
        seqs = (tokens > 0).sum().to(values.dtype)
        if mode == "seq-mean-token-sum":
            num, den = masked.sum(), seqs
        elif mode == "seq-mean-token-mean":
            num, den = (masked.sum(dim=-1) / tokens.clamp(min=1)).sum(), seqs
        else:
            length = values.shape[-1] if max_len is None else int(max_len)
            if length < values.shape[-1] and bool((tokens > length).any()):
                raise ValueError(f"aggregate: seq-mean-token-sum-norm with max_len={length} but a response has "
                                 f"{int(tokens.max())} tokens; max_len is the longest response allowed")
            num, den = masked.sum(), seqs * length
    else:
        raise ValueError(f"unknown loss aggregation '{mode}'; choose one of: {', '.join(AGG_MODES)}")
    div = den.clamp(min=1) if denominator is None else torch.as_tensor(denominator, dtype=num.dtype,
                                                                         device=num.device)
    return num / div, _pair(num, den)


def _inputs(name, logprobs, old_logprobs, advantages, mask):
    if logprobs.dim() != 2 or old_logprobs.shape != logprobs.shape or mask.shape != logprobs.shape:
        raise ValueError(f"{name}: logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} "
                         f"and mask {tuple(mask.shape)} must all be [B, T]")
    lp, old = _up(logprobs), _up(old_logprobs).detach().to(_up(logprobs).dtype)
    adv = torch.as_tensor(advantages).detach().to(lp.dtype)
    if adv.dim() == 1 and adv.shape[0] == lp.shape[0]:
        adv = adv.unsqueeze(-1)
    elif adv.shape != lp.shape:
        raise ValueError(f"{name}: advantages have shape {tuple(adv.shape)}; expected [B]={lp.shape[0]} "
                         f"(one per sample) or [B, T]={tuple(lp.shape)}")
    return lp, old, adv, mask.to(lp.dtype)


def _clip_metrics(m, ratio, log_ratio, adv, clipped, clipped_ratio, clip_low, clip_high) -> Metrics:
    """``ratio``/``log_ratio``: the token ratio; ``clipped_ratio``: the ratio the clip was applied to."""
    ntok = m.sum()
    seqs = (m.sum(dim=-1) > 0).sum()
    low = clipped & (clipped_ratio < 1 - clip_low) & (adv < 0)
    high = clipped & (clipped_ratio > 1 + clip_high) & (adv > 0)
    kl = (ratio - 1) - log_ratio
    return {
        "clip_frac": _pair((clipped * m).sum(), ntok),
        "clip_frac_low": _pair((low * m).sum(), ntok),
        "clip_frac_high": _pair((high * m).sum(), ntok),
        "ratio_mean": _pair((ratio.detach() * m).sum(), ntok),
        "approx_kl": _pair((kl.detach() * m).sum(), ntok),
        "tokens": _pair(ntok, 1),
        "response_length": _pair(ntok, seqs),
    }


def _check_clip(name, clip_low, clip_high, clip_c=None):
    if not 0 <= clip_low < 1 or clip_high < 0:
        raise ValueError(f"{name}: clip_low must be in [0, 1) and clip_high >= 0, got clip_low={clip_low}, "
                         f"clip_high={clip_high} (the ratio is kept in [1 - clip_low, 1 + clip_high])")
    if clip_c is not None and clip_c <= 1:
        raise ValueError(f"{name}: the dual clip clip_c must be > 1 (it bounds the loss of a negative advantage "
                         f"at -A * clip_c; 3 is usual), got {clip_c}; use None to turn it off")


@POLICY_LOSSES.register("ppo", "clipped surrogate with separate low/high clip (DAPO) and optional dual clip")
def ppo_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                  mask: torch.Tensor, *, clip_low: float = 0.2, clip_high: float = 0.2,
                  clip_c: Optional[float] = None, agg: str = "token-mean", max_len: Optional[int] = None,
                  denominator=None) -> Tuple[torch.Tensor, Metrics]:
    """The PPO/GRPO clipped surrogate per token, aggregated by ``agg`` (:func:`aggregate`).

    ``r = exp(logprobs - old_logprobs)`` ``[B, T]``, ``A`` the sample's advantage:
    ``l = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))``; with the dual clip ``c`` (> 1), for
    ``A < 0`` also ``l = min(l, -A c)``. The gradient is zero wherever a clipped branch is taken: for
    ``A > 0`` above ``1 + clip_high``, for ``A < 0`` below ``1 - clip_low`` (and above ``c``). At ``r = 1``
    (on-policy, first update) the loss is ``-A`` aggregated. DAPO: ``clip_high=0.28``, ``agg="token-mean"``.
    Returns ``(loss, metrics)`` (see the module docstring).
    """
    _check_clip("ppo", clip_low, clip_high, clip_c)
    lp, old, adv, m = _inputs("ppo", logprobs, old_logprobs, advantages, mask)
    log_ratio = (lp - old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped_loss = -adv * ratio.clamp(1 - clip_low, 1 + clip_high)
    per_token = torch.maximum(unclipped, clipped_loss)
    clipped = clipped_loss > unclipped
    dual = None
    if clip_c is not None:
        bound = -adv * clip_c
        dual = (adv < 0) & (per_token > bound)
        per_token = torch.where(dual, bound.expand_as(per_token), per_token)
    loss, pair = aggregate(per_token, m, agg, max_len=max_len, denominator=denominator)
    metrics = {"policy_loss": pair, **_clip_metrics(m, ratio, log_ratio, adv, clipped, ratio, clip_low, clip_high)}
    if dual is not None:
        metrics["dual_clip_frac"] = _pair((dual * m).sum(), m.sum())
    return loss, metrics


@POLICY_LOSSES.register("gspo", "clipped surrogate on the sequence-level ratio (GSPO)")
def gspo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, *, clip_low: float = 3e-4, clip_high: float = 4e-4,
              agg: str = "seq-mean-token-mean", max_len: Optional[int] = None,
              denominator=None) -> Tuple[torch.Tensor, Metrics]:
    """GSPO: the clipped surrogate on the sequence's length-normalised ratio.

    ``s_b = exp(sum_t m (logprobs - old_logprobs) / n_b)`` ``[B]`` (the geometric mean of the token ratios).
    Each token carries ``s_bt = sg(s_b) * exp(logprobs_bt - sg(logprobs_bt))``: its value is ``s_b``, its
    gradient ``s_b * d logprobs_bt``. ``l = max(-A s, -A clip(s, 1 - clip_low, 1 + clip_high))`` per token,
    so a clipped sequence gets no gradient on any token; aggregated by ``agg`` (the default
    ``seq-mean-token-mean`` gives GSPO's ``-1/|S| sum_b A_b s_b``; its gradient is
    ``A_b s_b / n_b * sum_t d logprobs_bt`` per sequence). The clip range is the paper's (3e-4, 4e-4): the
    sequence ratio moves far less than token ratios. Returns ``(loss, metrics)``; ``clip_frac`` counts the
    tokens of clipped sequences, ``ratio_mean`` and ``approx_kl`` are per token; ``seq_ratio_mean`` is the
    mean of ``s_b`` over sequences.
    """
    _check_clip("gspo", clip_low, clip_high)
    lp, old, adv, m = _inputs("gspo", logprobs, old_logprobs, advantages, mask)
    log_ratio = (lp - old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    log_seq = (log_ratio * m).sum(dim=-1) / m.sum(dim=-1).clamp(min=1)
    seq_ratio = torch.exp(lp - lp.detach() + log_seq.detach().unsqueeze(-1))
    unclipped = -adv * seq_ratio
    clipped_loss = -adv * seq_ratio.clamp(1 - clip_low, 1 + clip_high)
    per_token = torch.maximum(unclipped, clipped_loss)
    clipped = clipped_loss > unclipped
    loss, pair = aggregate(per_token, m, agg, max_len=max_len, denominator=denominator)
    metrics = {"policy_loss": pair, **_clip_metrics(m, torch.exp(log_ratio), log_ratio, adv, clipped,
                                                    seq_ratio.detach(), clip_low, clip_high)}
    metrics["seq_ratio_mean"] = _pair((torch.exp(log_seq) * (m.sum(dim=-1) > 0)).sum(),
                                      (m.sum(dim=-1) > 0).sum())
    return loss, metrics


def entropy_from_logits(logits: torch.Tensor, group=None) -> torch.Tensor:
    """Entropy ``H = logsumexp(z) - sum_v softmax(z)_v z_v`` of each token's distribution: ``[B, T, V]`` ->
    ``[B, T]`` (computed in fp32 at least). Mask and aggregate it with :func:`aggregate`.

    ``group``: the tensor-parallel process group when ``logits`` is this rank's vocabulary shard
    (Megatron's output layer with ``parallel_output``): the max, the partition function and
    ``sum p z`` are all-reduced over it (max, sum, sum), so every rank returns the entropy of the whole
    distribution. Differentiable without ``group``; with it, a metric only (call under ``no_grad``: the
    all-reduces carry no gradient)."""
    z = _up(logits)
    if group is None or torch.distributed.get_world_size(group) == 1:
        p = torch.softmax(z, dim=-1)
        pz = torch.where(p > 0, p * z, torch.zeros_like(z))  # a -inf logit (masked token) adds 0, not nan
        return torch.logsumexp(z, dim=-1) - pz.sum(dim=-1)
    import torch.distributed as dist

    zmax = z.amax(dim=-1)
    dist.all_reduce(zmax, op=dist.ReduceOp.MAX, group=group)
    e = torch.exp(z - zmax.unsqueeze(-1))                       # [B, T, V/tp], in (0, 1]
    ez = torch.where(e > 0, e * (z - zmax.unsqueeze(-1)), torch.zeros_like(z)).sum(dim=-1)
    sums = torch.stack([e.sum(dim=-1), ez])                      # [2, B, T]: partition function, sum e (z - max)
    dist.all_reduce(sums, group=group)
    # H = log Z - sum_v (e_v / Z) (z_v - max), with Z = sum_v e_v on the shifted logits.
    return torch.log(sums[0]) - sums[1] / sums[0]


__all__ = ["AGG_MODES", "aggregate", "ppo_clip_loss", "gspo_loss", "entropy_from_logits"]
