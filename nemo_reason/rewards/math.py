"""The ``math`` verifier: is the completion's final answer mathematically equal to ``sample["answer"]``?

The final answer is taken from what follows the last ``</think>`` (the whole completion without one),
in order of preference:

1. the content of every ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces). Boxes that disagree score
   0 (the completion must commit to one answer: each distinct box has to equal the gold), as does an
   empty or unclosed box;
2. else the last ``Answer: ...`` / ``The (final) answer is ...`` line;
3. else the last expression: the last ``$...$``, ``\\(...\\)``, ``\\[...\\]`` segment or number.

Equivalence, after light normalisation (``\\dfrac``/``\\tfrac`` -> ``\\frac``, ``\\left``/``\\right``,
degree signs, thousands separators ``1,000`` / ``1\\,000`` / ``1{,}000``): equal strings, else
math-verify's comparison of both sides wrapped in ``$...$`` (numbers within its 6-digit rounding,
fractions, LaTeX, sets, intervals, symbolic simplification). Percentages have their own rule, since
math-verify misreads them once wrapped: ``50%`` equals ``0.5`` (its value) and also ``50`` (the
sign left out, the usual grading of "what percent" questions); two percentages compare as numbers.

Never a false positive, so checking is bounded: an answer longer than :data:`MAX_CHARS`, with a
number of more than :data:`MAX_DIGITS` digits, a power tower (``10^{10^{10}}``, ``9**9**9``), an
exponent or factorial over :data:`MAX_EXPONENT`, scores 0 without being parsed (big-integer
arithmetic runs in C, where no signal interrupts it). The rest runs under a :data:`TIME_LIMIT_S`
budget of CPU time (``signal.setitimer(ITIMER_PROF)``, so a score does not change with the machine's
load; math-verify's own ``signal.alarm`` timeouts are off, so this module also works in threads,
where only the size guards apply). :mod:`nemo_reason.rewards.batch` adds a hard per-sample kill (wall
time) on top. Left out: units beyond what math-verify strips, answers in words ("five").
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from typing import List, Optional

from nemo_reason.rewards import field, final_part, register_reward

MAX_CHARS = 300
MAX_DIGITS = 60
MAX_EXPONENT = 1000
MAX_BOXES = 8
TIME_LIMIT_S = 2.0

_BOX = re.compile(r"\\(?:boxed|fbox)\b\s*")
_ANSWER_LINE = re.compile(r"(?im)\banswer\s*(?:is\s*[:：]?|[:：])\s*(?P<a>[^\n]*)$")
_LAST_EXPR = re.compile(
    r"\$\$(?P<d>.+?)\$\$|\$(?P<s>[^$]+?)\$|\\\((?P<p>.+?)\\\)|\\\[(?P<b>.+?)\\\]"
    r"|(?P<n>-?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+)?(?:\s*\\?%)?)", re.S)
_SEPARATED = re.compile(r"^-?\d{1,3}(?:(?:,|\\,|\{,\}|\\ |\s)\d{3})+(?:\.\d+)?$")
_DIGIT_RUN = re.compile(r"\d+(?:(?:,|\\,|\{,\})\d{3})*")
_POWER = re.compile(r"\^|\*\*")
_FACTORIAL = re.compile(r"(\d+)\s*!")


class _Timeout(BaseException):
    """Raised by the timer; a BaseException so that math-verify's ``except Exception`` lets it through."""


def _braced(text: str, start: int) -> Optional[str]:
    """The content of the brace group opening at ``text[start] == "{"``, or None when unclosed."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == "\\":  # an escaped brace \{ does not count
            continue
        if c == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif c == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[start + 1:i]
    return None


def boxed_answers(text: str) -> Optional[List[str]]:
    """Every ``\\boxed{}`` / ``\\fbox{}`` content in order; "" for an empty or unclosed box; None if
    there is no box at all."""
    out = []
    for m in _BOX.finditer(text):
        j = m.end()
        if j < len(text) and text[j] == "{":
            inner = _braced(text, j)
            out.append((inner or "").strip())
        else:  # \boxed 5
            tok = re.match(r"[^\s$]+", text[j:])
            out.append(tok.group(0) if tok else "")
    return out if out else None


def extract_answers(completion: str) -> List[str]:
    """The candidate final answers of ``completion`` (several only when it has several boxes)."""
    boxes = boxed_answers(completion)
    if boxes is not None:
        return boxes
    lines = list(_ANSWER_LINE.finditer(completion))
    if lines:
        return [lines[-1].group("a").strip()]
    last = None
    for last in _LAST_EXPR.finditer(completion):
        pass
    if last is None:
        return []
    return [next(g for g in last.groups() if g is not None).strip()]


def normalize(ans: str) -> str:
    s = ans.strip().rstrip(".").strip()
    s = re.sub(r"^\*\*|\*\*$", "", s).strip()  # markdown bold around an answer line
    for a, b in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(a) and s.endswith(b) and len(s) >= len(a) + len(b):
            s = s[len(a):len(s) - len(b)].strip()
    boxes = boxed_answers(s)
    if boxes:
        s = boxes[-1]
    s = s.rstrip(".").strip()
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\left\b|\\right\b", "", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°", "", s)
    s = s.replace("\\!", "").replace("\\%", "%")
    if _SEPARATED.match(s):
        s = re.sub(r",|\\,|\{,\}|\\ |\s", "", s)
    return s.strip()


def too_big(expr: str) -> bool:
    """True when parsing or evaluating ``expr`` could take unbounded time or memory."""
    if len(expr) > MAX_CHARS:
        return True
    if any(len(re.sub(r"\D", "", m.group(0))) > MAX_DIGITS for m in _DIGIT_RUN.finditer(expr)):
        return True
    if any(int(m.group(1)) > MAX_EXPONENT for m in _FACTORIAL.finditer(expr)):
        return True
    for m in _POWER.finditer(expr):
        operand, rest = _exponent(expr, m.end())
        if operand is None or _POWER.search(operand) or _POWER.match(rest.lstrip()):
            return True  # unclosed group or a tower a^b^c
        digits = re.sub(r"[^\d.]", "", operand)
        if digits and digits != "." and float(digits) > MAX_EXPONENT:
            return True
    return False


def _exponent(expr: str, i: int):
    """(the exponent starting at ``expr[i]``, the text after it); (None, "") if its group is unclosed."""
    while i < len(expr) and expr[i] == " ":
        i += 1
    if i < len(expr) and expr[i] in "{(":
        close = "}" if expr[i] == "{" else ")"
        depth = 0
        for j in range(i, len(expr)):
            if expr[j] in "{(":
                depth += 1
            elif expr[j] in "})":
                depth -= 1
                if depth == 0:
                    return expr[i + 1:j], expr[j + 1:] if expr[j] == close else ""
        return None, ""
    m = re.match(r"-?\\?[\w.]+", expr[i:])
    if not m:
        return "", expr[i:]
    return m.group(0), expr[i + m.end():]


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise :class:`_Timeout` after ``seconds`` of this process's CPU time (``ITIMER_PROF``: a score
    must not depend on how loaded the machine is; the batch scorer bounds wall time). Only in the main
    thread, where signal handlers run; elsewhere the size guards are the bound. A CPU timer already
    running is kept: if it is due first it stays as it is, otherwise it is re-armed afterwards."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return
    outer = signal.getitimer(signal.ITIMER_PROF)[0]
    if 0 < outer <= seconds:
        yield
        return

    def on_timer(signum, frame):
        raise _Timeout()

    start = time.process_time()
    old = signal.signal(signal.SIGPROF, on_timer)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)
        if outer > 0:
            signal.setitimer(signal.ITIMER_PROF, max(1e-3, outer - (time.process_time() - start)))


_mv = None


def _math_verify():
    global _mv
    if _mv is None:
        import math_verify
        import math_verify.grader
        import math_verify.parser

        # Its timeouts are off (they need the main thread); _time_limit and the size guards bound us.
        math_verify.parser.TIMEOUT_WARNING_SHOWN = math_verify.grader.TIMEOUT_WARNING_SHOWN = True
        # The first LaTeX parse builds the ANTLR parser (~0.5 s): not inside anyone's time limit.
        math_verify.parse("$\\frac{1}{2}$", parsing_timeout=None)
        _mv = math_verify
    return _mv


def _verify(gold: str, pred: str) -> bool:
    mv = _math_verify()
    g = mv.parse(f"${gold}$", parsing_timeout=None)
    p = mv.parse(f"${pred}$", parsing_timeout=None)
    return bool(g and p and mv.verify(g, p, timeout_seconds=None))


def equivalent(gold: str, pred: str) -> bool:
    """Whether answer ``pred`` equals ``gold`` (both already extracted). No time bound of its own."""
    g, p = normalize(gold), normalize(pred)
    if not p or not g:
        return False
    if g == p:
        return True
    if too_big(p) or too_big(g):
        return False
    g_pct, p_pct = g.endswith("%"), p.endswith("%")
    if g_pct or p_pct:
        g0, p0 = g.rstrip("%").strip(), p.rstrip("%").strip()
        if not g0 or not p0:
            return False
        if g_pct and p_pct:
            return g0 == p0 or _verify(g0, p0)
        # one side is a percentage: the sign left out (50% ~ 50), or equal values (50% = 0.5)
        if _verify(g0, p0):
            return True
        return _verify(g, rf"\frac{{{p0}}}{{100}}") if p_pct else _verify(rf"\frac{{{g0}}}{{100}}", p)
    return _verify(g, p)


@register_reward("math", "final answer (\\boxed, Answer:, last expression) equals sample['answer']",
                 fields=("answer",))
def score_math(sample: dict, completion: str) -> float:
    """1.0 if the completion's final answer equals ``sample["answer"]`` mathematically, else 0.0."""
    gold = str(field(sample, "answer", "math"))
    answers = extract_answers(final_part(completion or ""))
    distinct = list(dict.fromkeys(normalize(a) for a in answers))
    if not distinct or len(distinct) > MAX_BOXES or any(not a for a in distinct):
        return 0.0
    _math_verify()
    try:
        with _time_limit(TIME_LIMIT_S):
            return 1.0 if all(equivalent(gold, a) for a in distinct) else 0.0
    except _Timeout:
        return 0.0
