"""The ``exact`` verifier: short-form answers compared after SQuAD's normalisation.

``sample["answer"]`` is a string or a list of acceptable strings (aliases). The prediction is taken
from what follows the last ``</think>``: the ``\\boxed{}`` content (several different boxes score 0),
else the last ``Answer:`` / ``The answer is`` line, else the last non-empty line. Both sides are
normalised as SQuAD's official script does: lower case, punctuation removed, the articles a/an/the
removed, whitespace collapsed; the score is 1.0 if the prediction equals any alias. Left out: token
F1 (partial credit) and numeric equivalence, which is the ``math`` verifier's job.
"""

from __future__ import annotations

import re
import string
from typing import List

from nemo_reason.rewards import field, final_part, register_reward
from nemo_reason.rewards.math import boxed_answers

_ANSWER_LINE = re.compile(r"(?im)\banswer\s*(?:is\s*[:：]?|[:：])\s*(?P<a>[^\n]*)$")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1's normalisation: lower, no punctuation, no articles, single spaces."""
    s = "".join(c for c in str(s).lower() if c not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def predicted_answers(completion: str) -> List[str]:
    text = final_part(completion)
    boxes = boxed_answers(text)
    if boxes is not None:
        return [re.sub(r"^\\text\{(.*)\}$", r"\1", b.strip()) for b in boxes]
    lines = list(_ANSWER_LINE.finditer(text))
    if lines:
        return [lines[-1].group("a")]
    rows = [r for r in text.splitlines() if r.strip()]
    return [rows[-1]] if rows else []


@register_reward("exact", "normalised short answer equals sample['answer'] (a string or a list of aliases)",
                 fields=("answer",))
def score_exact(sample: dict, completion: str) -> float:
    """1.0 if the completion's answer equals one of the gold strings after normalisation, else 0.0."""
    gold = field(sample, "answer", "exact")
    aliases = {normalize_answer(g) for g in (gold if isinstance(gold, (list, tuple)) else [gold])} - {""}
    preds = {normalize_answer(p) for p in predicted_answers(completion or "")}
    if len(preds) != 1:
        return 0.0
    return 1.0 if preds.pop() in aliases else 0.0
