"""The ``format`` verifier: does the completion have the expected shape (not: is it right)?

The default shape (:data:`DEFAULT_FORMAT`, preset ``"think"``) is one ``<think>...</think>`` block
at the start, holding some reasoning, followed by a non-empty answer, and no second ``<think>``.
A sample can ask for another shape with ``sample["format"]``: a preset name from :data:`FORMATS`
(``think``, ``think_boxed``: the answer after the block holds a ``\\boxed{}``, ``boxed``: a box
anywhere, ``answer_line``: an ``Answer:`` line) or a regular expression, which must match the
whole completion (``re.fullmatch`` with DOTALL). Change the module constant to change the default
for every sample. Used as a small shaping term next to a correctness reward (e.g. 0.1 x format),
never alone. Left out: partial credit for half-right shapes.
"""

from __future__ import annotations

import functools
import re

from nemo_reason.rewards import register_reward

_C = r"(?:(?!</?think>).)"  # any character that does not open a think tag
_S = r"(?:(?!</?think>)\S)"  # the same, not a space
# Written without two adjacent unbounded quantifiers, so a long completion that fails to match fails
# in linear time.
_BLOCK = rf"\s*<think>\s*{_S}{_C}*?</think>"
FORMATS = {
    "think": rf"{_BLOCK}\s*{_S}{_C}*",
    "think_boxed": rf"{_BLOCK}{_C}*\\boxed\{{\s*[^\s}}]{_C}*",
    "boxed": r".*\\boxed\{\s*[^\s}].*",
    "answer_line": r"(?:.*\n)?\s*(?:\*\*)?answer(?:\*\*)?\s*:\s*(?:\*\*)?\s*\S.*",
}
DEFAULT_FORMAT = "think"


@functools.lru_cache(maxsize=64)
def _compiled(fmt: str) -> "re.Pattern":
    pattern = FORMATS.get(fmt, fmt)
    try:
        return re.compile(pattern, re.S | (re.I if fmt == "answer_line" else 0))
    except re.error as exc:
        raise ValueError(f"format {fmt!r} is neither a preset ({', '.join(FORMATS)}) nor a valid regular "
                         f"expression: {exc}") from exc


@register_reward("format", "completion has the expected shape (default: <think>...</think> then an answer)")
def score_format(sample: dict, completion: str) -> float:
    """1.0 if ``completion`` matches ``sample.get("format")`` (a preset name or a regex; default
    :data:`DEFAULT_FORMAT`) in full, else 0.0."""
    fmt = (sample or {}).get("format") or DEFAULT_FORMAT
    return 1.0 if _compiled(str(fmt)).fullmatch(completion or "") else 0.0
