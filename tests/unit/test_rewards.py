"""Verifiers (math, mcq, exact, format), custom verifiers by import path, and the batch scorer's handling
of bad input: unknown names, missing fields, crashing, hanging and dying verifiers."""

from __future__ import annotations

import os
import time

import pytest

from nemo_reason.config.errors import ConfigError
from nemo_reason.rewards import REWARDS, MissingFieldError, get_reward
from nemo_reason.rewards.batch import score_batch

# (gold, completion): each must score 1.0
MATH_TRUE = [
    ("1000", "The total is \\boxed{1,000}."),
    ("1000", "so \\boxed{1\\,000} people"),
    ("1234567", "Answer: 1,234,567"),
    ("0.5", "\\boxed{\\frac{1}{2}}"),
    ("0.5", "\\boxed{\\dfrac{1}{2}}"),
    ("\\frac{3}{4}", "Answer: 0.75"),
    ("3/4", "\\boxed{\\tfrac34}"),
    ("0.5", "Answer: 50%"),  # a percentage equals its value
    ("50", "\\boxed{50\\%}"),  # and the number without the sign
    ("50\\%", "\\boxed{0.5}"),
    ("x^2+2x+1", "\\boxed{(x+1)^2}"),
    ("\\frac{\\sqrt{2}}{2}", "\\boxed{\\frac{1}{\\sqrt{2}}}"),
    ("\\sqrt{2}/2", "\\boxed{1/\\sqrt 2}"),
    ("\\{1,2,3\\}", "\\boxed{\\{3,2,1\\}}"),
    ("(1,2]", "the solution set is \\boxed{(1, 2]}"),
    ("[0,\\infty)", "so $x \\in [0,\\infty)$"),
    ("7", "so x = 7."),  # last expression
    ("7", "The answer is $7$."),
    ("7", "**Answer:** 7"),
    ("7", "\\boxed{7} and again \\boxed{7.0}"),  # boxes that agree
    ("7", "\\fbox{7}"),
    ("7", "<think>maybe \\boxed{3}?</think>\n\\boxed{7}"),  # the box inside the reasoning is not the answer
    ("-4", "x=-4"),
    ("12", "\\boxed{x=12}"),
    ("2", "\\boxed{\\sqrt{4}}"),
    ("30", "\\boxed{30^\\circ}"),
    ("32", "\\boxed{2^{5}}"),
    (8, "\\boxed{8}"),  # a non-string gold
]

# (gold, completion): each must score 0.0
MATH_FALSE = [
    ("7", "\\boxed{7} or maybe \\boxed{8}"),  # two different boxes
    ("7", "\\boxed{8} no wait \\boxed{7}"),
    ("7", "\\boxed{}"),
    ("7", "\\boxed{ }"),
    ("7", "\\boxed{7"),  # unclosed
    ("7", ""),
    ("7", "I do not know."),
    ("5", "\\boxed{)(*&^}"),  # unparsable
    ("5", "\\boxed{10^{10^{10}}}"),  # astronomically large
    ("5", "\\boxed{9**9**9}"),
    ("5", "\\boxed{" + "1" * 10000 + "}"),
    ("5", "\\boxed{100000!}"),
    ("7", "\\boxed{8}"),
    ("(1,2]", "\\boxed{(1,2)}"),
    ("\\{1,2\\}", "\\boxed{\\{1,2,3\\}}"),
    ("\\pi", "\\boxed{3.14}"),
    ("0.5", "\\boxed{5\\%}"),
    ("50\\%", "\\boxed{0.5\\%}"),
    ("x^2+1", "\\boxed{(x+1)^2}"),
]

MCQ = [  # (completion, score) with gold "C"
    ("Answer: C", 1.0), ("(C)", 1.0), ("\\boxed{C}", 1.0), ("\\boxed{\\text{C}}", 1.0), ("The answer is C.", 1.0),
    ("Option A is wrong, so it must be C)", 1.0), ("The correct answer is **(C)**.", 1.0), ("C", 1.0),
    ("I pick B.\nAnswer: C, because A is wrong", 1.0), ("<think>A? B?</think>\nAnswer: C", 1.0),
    ("Answer: Paris", 1.0),  # the option's text
    ("Answer: B", 0.0), ("Answer: A or C", 0.0), ("Answer: A, C", 0.0), ("\\boxed{A} \\boxed{C}", 0.0),
    ("Answer: c", 0.0), ("this is a test", 0.0), ("Answer: E", 0.0), ("", 0.0),
]

EXACT = [  # (gold, completion, score)
    ("the Beatles", "Answer: Beatles.", 1.0),
    (["NYC", "New York City"], "new  york city", 1.0),
    ("Paris", "\\boxed{\\text{Paris}}", 1.0),
    ("Paris", "<think>Lyon? no</think>\nThe answer is: Paris!", 1.0),
    ("An apple", "apple", 1.0),
    ("Paris", "Answer: London", 0.0),
    ("Paris", "\\boxed{Paris} \\boxed{Rome}", 0.0),
    ("Paris", "Paris, France", 0.0),
]

FORMAT = [  # (sample, completion, score)
    ({}, "<think>hmm</think>42", 1.0),
    ({}, "  <think>\nreason\n</think>\n\nThe answer is 4", 1.0),
    ({}, "<think></think>42", 0.0),
    ({}, "<think>hmm</think>   ", 0.0),
    ({}, "42", 0.0),
    ({}, "<think>a</think>b<think>c</think>d", 0.0),
    ({}, "<think>" + "x " * 50000, 0.0),
    ({"format": "think_boxed"}, "<think>x</think> so \\boxed{4}", 1.0),
    ({"format": "think_boxed"}, "<think>x</think> so 4", 0.0),
    ({"format": "answer_line"}, "work\nAnswer: 4", 1.0),
    ({"format": r"\d+"}, "42", 1.0),
    ({"format": r"\d+"}, "42a", 0.0),
]


def my_verifier(sample, completion):
    """A custom verifier found by path: 1.0 when the completion contains the answer."""
    return float(str(sample["answer"]) in completion)


my_verifier.fields = ("answer",)

CALLS = []


def counting_verifier(sample, completion):
    CALLS.append(1)
    return 1.0


counting_verifier.fields = ("answer",)


def crashy_verifier(sample, completion):
    if completion == "crash":
        raise RuntimeError("boom on purpose")
    if completion == "bad":
        return 1.5
    if completion == "die":
        os._exit(3)
    if completion == "hang":
        time.sleep(60)
    return 1.0


@pytest.mark.parametrize("gold,completion", MATH_TRUE)
def test_math_equivalent(gold, completion):
    assert REWARDS.get("math")({"answer": gold}, completion) == 1.0


@pytest.mark.parametrize("gold,completion", MATH_FALSE)
def test_math_no_false_positive(gold, completion):
    t0 = time.perf_counter()
    assert REWARDS.get("math")({"answer": gold}, completion) == 0.0
    assert time.perf_counter() - t0 < 2.0


def test_math_time_bound(monkeypatch):
    import nemo_reason.rewards.math as m

    monkeypatch.setattr(m, "TIME_LIMIT_S", 0.3)  # seconds of CPU time
    slow = "\\boxed{\\prod_{k=1}^{999}(x-k) - \\prod_{k=1}^{999}(k-x)}"  # ~5 s of sympy unbounded
    t0, c0 = time.perf_counter(), time.process_time()
    assert m.score_math({"answer": "0"}, slow) == 0.0
    # the bound is CPU time, so that a loaded machine does not change scores; wall time follows it
    assert time.process_time() - c0 < 1.0 and time.perf_counter() - t0 < 5.0
    assert m.score_math({"answer": "0.5"}, "\\boxed{1/2}") == 1.0  # the timer is gone afterwards


@pytest.mark.parametrize("completion,score", MCQ)
def test_mcq(completion, score):
    sample = {"answer": "C", "choices": ["Rome", "Oslo", "Paris", "Lima"]}
    assert REWARDS.get("mcq")(sample, completion) == score


def test_mcq_bundled_record():
    import random

    from nemo_reason.data.corpora.mcq import record

    rec = record(random.Random(3))
    assert REWARDS.get("mcq")(rec, f"Answer: {rec['answer']}") == 1.0
    wrong = next(x for x in "ABCD" if x != rec["answer"])
    assert REWARDS.get("mcq")(rec, f"The answer is ({wrong}).") == 0.0


@pytest.mark.parametrize("gold,completion,score", EXACT)
def test_exact(gold, completion, score):
    assert REWARDS.get("exact")({"answer": gold}, completion) == score


@pytest.mark.parametrize("sample,completion,score", FORMAT)
def test_format(sample, completion, score):
    assert REWARDS.get("format")(sample, completion) == score


def test_registry_and_custom_path():
    assert {"math", "mcq", "exact", "format"} <= set(REWARDS.names())
    fn = get_reward("tests.unit.test_rewards:my_verifier")
    assert fn is my_verifier and fn({"answer": 3}, "it is 3") == 1.0
    res = score_batch("tests.unit.test_rewards:my_verifier", [{"answer": i} for i in range(4)],
                      ["0", "x", "2", "3"], workers=2)
    assert res.scores == [1.0, 0.0, 1.0, 1.0] and res.failures == 0


def test_unknown_reward_names_closest():
    with pytest.raises(ConfigError, match=r"unknown reward 'maths'.*did you mean: math"):
        get_reward("maths")
    with pytest.raises(ConfigError, match="cannot import module 'no_such_pkg.mod'"):
        get_reward("no_such_pkg.mod:score")
    with pytest.raises(ConfigError, match="has no attribute 'my_verifer'.*my_verifier"):
        get_reward("tests.unit.test_rewards:my_verifer")


def test_missing_field_names_position_before_scoring():
    samples = [{"answer": 1}] * 17 + [{"question": "q"}] + [{"answer": 2}] * 3
    CALLS.clear()
    with pytest.raises(MissingFieldError, match=r"samples\[17\] has no field 'answer'.*question"):
        score_batch(counting_verifier, samples, ["c"] * len(samples), workers=0)
    assert CALLS == []
    with pytest.raises(MissingFieldError, match=r"samples\[1\] has no field 'answer'.*reward 'math'"):
        score_batch("math", [{"answer": 1}, {"answer": None}], ["1", "2"])
    with pytest.raises(ConfigError, match="2 samples but 1 completions"):
        score_batch("math", [{"answer": 1}, {"answer": 2}], ["1"])


def test_failures_are_counted_never_fatal():
    completions = ["ok", "crash", "ok", "bad", "die", "ok", "hang", "ok"]
    t0 = time.perf_counter()
    res = score_batch(crashy_verifier, [{}] * len(completions), completions, workers=2, timeout_s=1.0)
    assert time.perf_counter() - t0 < 15
    assert res.scores == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    assert res.failed == [1, 3, 4, 6] and res.failures == 4 and res.timeouts == 1
    assert res.first_error.startswith("samples[1]: RuntimeError: boom on purpose")
    assert "outside [0, 1]" in res.errors[3] and "exit code 3" in res.errors[4] and "timeout_s=1" in res.errors[6]
    serial = score_batch(crashy_verifier, [{}] * 4, completions[:4], workers=0)
    assert serial.scores == res.scores[:4] and serial.failed == [1, 3]


def test_batch_parallel_equals_serial():
    cases = MATH_TRUE + MATH_FALSE
    samples = [{"answer": g} for g, _ in cases]
    completions = [c for _, c in cases]
    par = score_batch("math", samples, completions, workers=2, timeout_s=10.0)
    ser = score_batch("math", samples, completions, workers=0)
    assert par.scores == ser.scores == [1.0] * len(MATH_TRUE) + [0.0] * len(MATH_FALSE)
    assert par.failures == ser.failures == 0
