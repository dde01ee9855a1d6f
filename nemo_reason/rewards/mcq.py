"""The ``mcq`` verifier: is the option letter the completion commits to ``sample["answer"]``?

The gold is a letter (``"C"``; ``"(C)"`` or a 0-based index are accepted), as the bundled corpus
(:mod:`nemo_reason.data.corpora.mcq`) writes it, with the options in ``sample["choices"]``: the valid
letters are the first ``len(choices)``, A-J without choices. The chosen letter comes from what
follows the last ``</think>``, from the first of these that is present:

1. ``\\boxed{C}`` (also ``\\boxed{\\text{C}}``, ``\\boxed{(C)}``); every box counts;
2. the last answer line: ``Answer: C``, ``**Answer:** (C)``, ``The (correct) answer is C.``, where a
   list ``A or C`` / ``A, C`` / ``A and C`` counts as several letters;
3. the end of the completion: a last line that opens with ``(C)``, ``C)``, ``C.``, ``C:`` or is just
   ``C``; or a closing ``(C)`` / ``C)``;
4. with ``choices``, an answer line whose text is exactly one option's text (``Answer: Paris``).

Several different letters score 0, as does no letter at all. Letters are upper case only, so the
article "a" is never read as option A. Left out: letters spelled as words ("option three").
"""

from __future__ import annotations

import re
from typing import List, Optional

from nemo_reason.rewards import field, final_part, register_reward

ALL_LETTERS = "ABCDEFGHIJ"

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{\s*(?:\\text(?:bf)?\{)?\s*\(?\s*([A-Z])\s*\)?\s*\}?\s*\}")
_ANSWER_LINE = re.compile(r"(?im)\banswer\s*(?:is\s*[:：]?|[:：])\s*(?P<a>[^\n]*)$")
_LIST = re.compile(r"^[\s*_]*\(?([A-Z])\)?(?![\w'])((?:\s*(?:,|/|&|\bor\b|\band\b)\s*\(?[A-Z]\)?(?![\w']))*)")
_LIST_MORE = re.compile(r"\(?([A-Z])\)?(?![\w'])")
_LAST_LINE = re.compile(r"^[\s*_]*\(?([A-Z])(?:\)|[.:]|\s*$)")
_CLOSING = re.compile(r"\(?([A-Z])\)[\s.*_]*$")


def _letters_in_span(span: str) -> List[str]:
    m = _LIST.match(span)
    if not m:
        return []
    return [m.group(1)] + _LIST_MORE.findall(m.group(2))


def chosen_letters(completion: str, choices: Optional[list] = None) -> List[str]:
    """The distinct letters the completion gives as its final answer (in order of appearance)."""
    text = final_part(completion)
    boxes = _BOX.findall(text)
    if boxes or re.search(r"\\(?:boxed|fbox)\b", text):
        return list(dict.fromkeys(boxes))  # a box that holds no letter gives none
    lines = list(_ANSWER_LINE.finditer(text))
    if lines:
        span = lines[-1].group("a").strip()
        letters = _letters_in_span(span)
        if not letters and choices:
            norm = span.strip(" .*_").lower()
            letters = [ALL_LETTERS[i] for i, c in enumerate(choices) if str(c).strip().lower() == norm]
        if letters:
            return list(dict.fromkeys(letters))
    rows = [r for r in text.strip().splitlines() if r.strip()]
    if rows:
        m = _LAST_LINE.match(rows[-1])
        if m:
            return [m.group(1)]
        m = _CLOSING.search(rows[-1])
        if m:
            return [m.group(1)]
    return []


def gold_letter(answer) -> str:
    if isinstance(answer, int) and not isinstance(answer, bool):
        return ALL_LETTERS[answer] if 0 <= answer < len(ALL_LETTERS) else ""
    return str(answer).strip().strip("().").strip().upper()


@register_reward("mcq", "the one option letter chosen equals sample['answer']", fields=("answer",))
def score_mcq(sample: dict, completion: str) -> float:
    """1.0 if the completion chooses exactly one letter and it is ``sample["answer"]``, else 0.0."""
    gold = gold_letter(field(sample, "answer", "mcq"))
    choices = sample.get("choices") or sample.get("options")
    valid = ALL_LETTERS[:len(choices)] if choices else ALL_LETTERS
    letters = chosen_letters(completion or "", choices)
    if len(letters) != 1 or letters[0] not in valid:
        return 0.0
    return 1.0 if letters[0] == gold else 0.0
