"""Per-token estimators of the KL divergence from the policy to a frozen reference, ``KL(pi || pi_ref)``,
on log-probs of tokens sampled from ``pi`` (Schulman, "Approximating KL divergence", 2020).

With ``d = ref_logprobs - logprobs`` (the log of ``pi_ref / pi`` at the sampled token):

- ``k1 = -d``: unbiased, high variance, can be negative;
- ``k2 = d**2 / 2``: biased, low variance, non-negative;
- ``k3 = exp(d) - d - 1``: unbiased and non-negative, low variance (GRPO's KL term, verl's "low_var_kl").

Each takes and returns ``[B, T]`` (any matching shapes); padding is the caller's to mask, e.g. with
:func:`nemo_reason.rl.losses.aggregate`. ``d`` is clamped to ``[-20, 20]`` inside ``k3`` so that ``exp``
cannot overflow. Left out: whether the KL enters the loss or the reward (the ``grpo`` step decides).
"""

from __future__ import annotations

import torch

from nemo_reason.rl import KL_ESTIMATORS, get_kl_estimator

LOG_RATIO_CLAMP = 20.0


@KL_ESTIMATORS.register("k1", "log(pi / pi_ref): unbiased, high variance")
def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """``k1 = logprobs - ref_logprobs``, shape ``[B, T]``."""
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("k2", "log(pi / pi_ref)**2 / 2: biased, low variance, >= 0")
def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """``k2 = (logprobs - ref_logprobs)**2 / 2``, shape ``[B, T]``."""
    return 0.5 * (logprobs - ref_logprobs).square()


@KL_ESTIMATORS.register("k3", "pi_ref/pi - 1 - log(pi_ref/pi): unbiased, low variance, >= 0")
def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """``k3 = exp(d) - d - 1`` with ``d = ref_logprobs - logprobs`` (clamped to +-20), shape ``[B, T]``."""
    d = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.expm1(d) - d


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token KL estimate ``[B, T]`` of estimator ``kind`` ("k1", "k2", "k3"); unmasked."""
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"kl_penalty: logprobs {tuple(logprobs.shape)} and ref_logprobs "
                         f"{tuple(ref_logprobs.shape)} differ; both are per-token log-probs [B, T]")
    return get_kl_estimator(kind)(logprobs, ref_logprobs)


__all__ = ["kl_k1", "kl_k2", "kl_k3", "kl_penalty"]
