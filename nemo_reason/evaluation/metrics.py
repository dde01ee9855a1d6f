"""Evaluation metrics over sampled completions: pass@k, maj@k, mean length. Pure functions, no torch.

- :func:`pass_at_k`: the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models
  Trained on Code", eq. 1) for one prompt with ``n`` samples of which ``c`` are correct:
  ``1 - C(n-c, k) / C(n, k)``, computed as the product ``prod_{i=n-c+1}^{n} (1 - k/i)`` so that no
  binomial coefficient is ever formed (``C(200, 100)`` overflows a float; the product does not).
- :func:`maj_at_k`: majority voting (self-consistency, Wang et al. 2022) for one prompt: among ``k``
  samples, the most frequent final answer wins and the prompt scores that answer's correctness.
  With ``n > k`` samples the ``n // k`` disjoint groups of ``k`` are averaged (less variance than the
  first ``k`` alone, the same expectation). A sample without an answer (``None``) never votes.
- :func:`mean` of response lengths (tokens).

Correctness is ``score >= 1`` (a verifier's full credit); partial scores (a format reward's 0.5)
count as wrong here and show up in the mean score instead.

Left out: bootstrap confidence intervals, pass@k for ``k > n`` (undefined: refused).
"""

from __future__ import annotations

from collections import Counter
from typing import Hashable, List, Optional, Sequence

CORRECT = 1.0 - 1e-9  # a score at least this is full credit


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of ``k`` samples drawn without replacement from ``n`` (``c``
    correct) is correct: ``1 - C(n-c, k) / C(n, k)``."""
    if not (0 <= c <= n) or n < 1:
        raise ValueError(f"pass_at_k: need 0 <= c <= n and n >= 1, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k={k} must be in [1, n={n}] (draw more samples per prompt, or lower k)")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def correct_count(scores: Sequence[float]) -> int:
    return sum(1 for s in scores if s >= CORRECT)


def mean_pass_at_k(per_prompt_scores: Sequence[Sequence[float]], k: int) -> float:
    """pass@k averaged over prompts; each prompt's list holds the scores of its ``n`` samples."""
    if not per_prompt_scores:
        return 0.0
    vals = [pass_at_k(len(s), correct_count(s), k) for s in per_prompt_scores]
    return sum(vals) / len(vals)


def majority(answers: Sequence[Optional[Hashable]]) -> Optional[int]:
    """Index of the first sample holding the most frequent non-None answer (ties: the answer seen
    first), or None when no sample has an answer."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    for i, a in enumerate(answers):
        if a is not None and counts[a] == top:
            return i
    return None  # unreachable


def maj_at_k(answers: Sequence[Optional[Hashable]], scores: Sequence[float], k: int) -> float:
    """maj@k of one prompt: ``answers[i]`` is sample i's extracted final answer (None: none),
    ``scores[i]`` its verifier score; averaged over the ``len // k`` disjoint groups of ``k``."""
    if len(answers) != len(scores):
        raise ValueError(f"maj_at_k: {len(answers)} answers but {len(scores)} scores")
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj_at_k: k={k} must be in [1, n={len(answers)}]")
    groups = len(answers) // k
    total = 0.0
    for g in range(groups):
        lo = g * k
        win = majority(answers[lo:lo + k])
        total += 1.0 if win is not None and scores[lo + win] >= CORRECT else 0.0
    return total / groups


def mean_maj_at_k(per_prompt_answers: Sequence[Sequence[Optional[Hashable]]],
                  per_prompt_scores: Sequence[Sequence[float]], k: int) -> float:
    if not per_prompt_scores:
        return 0.0
    vals = [maj_at_k(a, s, k) for a, s in zip(per_prompt_answers, per_prompt_scores)]
    return sum(vals) / len(vals)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarize(per_prompt_scores: List[List[float]], per_prompt_answers: List[List[Optional[Hashable]]],
              lengths: Sequence[int], k: int) -> dict:
    """pass@1, pass@k, maj@k, mean score and mean length (tokens) of one domain."""
    flat = [s for ss in per_prompt_scores for s in ss]
    return {"pass@1": mean_pass_at_k(per_prompt_scores, 1), f"pass@{k}": mean_pass_at_k(per_prompt_scores, k),
            f"maj@{k}": mean_maj_at_k(per_prompt_answers, per_prompt_scores, k),
            "mean_score": mean(flat), "mean_length": mean([float(x) for x in lengths])}
