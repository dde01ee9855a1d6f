"""Evaluation metrics and tasks without a model: the pass@k estimator against hand-computed values
and a brute-force enumeration of k-subsets, maj@k, answer votes, the held-out split's zero overlap
with the training corpora (and that the check catches an overlap), templates, user-JSONL errors."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from nemo_reason.config.errors import ConfigError
from nemo_reason.evaluation import metrics
from nemo_reason.evaluation.run import answer_key, format_table, trim_at_stop
from nemo_reason.evaluation.tasks import (DEFAULT_TRAINING_SOURCES, EVAL_SEED, EvalRecord, HeldOutError,
                                          check_held_out, held_out_task, load_jsonl_task, question_hash,
                                          render_prompt, training_question_hashes, training_sources)


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    """The share of k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_hand_values():
    assert metrics.pass_at_k(1, 1, 1) == 1.0
    assert metrics.pass_at_k(1, 0, 1) == 0.0
    assert metrics.pass_at_k(10, 3, 1) == pytest.approx(0.3)            # pass@1 = c / n
    assert metrics.pass_at_k(4, 1, 2) == pytest.approx(0.5)             # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert metrics.pass_at_k(5, 2, 2) == pytest.approx(0.7)             # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert metrics.pass_at_k(5, 3, 3) == 1.0                            # n - c < k
    assert metrics.pass_at_k(10, 0, 5) == 0.0


def test_pass_at_k_matches_enumeration_and_binomials():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                got = metrics.pass_at_k(n, c, k)
                assert got == pytest.approx(_brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)
                assert got == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_is_stable_where_binomials_overflow_floats():
    # C(1000, 500) ~ 1e299 and C(1000, 400) ~ 1e290: their float quotient is fine only by luck; the
    # product form gives the exact rational value's float.
    got = metrics.pass_at_k(1000, 100, 500)
    exact = 1 - math.comb(900, 500) / math.comb(1000, 500)  # Python ints: exact
    assert got == pytest.approx(exact, rel=1e-12)
    assert 0.0 <= metrics.pass_at_k(2000, 1, 1000) <= 1.0
    assert metrics.pass_at_k(2000, 1, 1000) == pytest.approx(0.5)


def test_pass_at_k_refuses_k_above_n():
    with pytest.raises(ValueError, match="k=3"):
        metrics.pass_at_k(2, 1, 3)
    with pytest.raises(ValueError):
        metrics.pass_at_k(2, 3, 1)


def test_mean_pass_at_k_counts_full_credit_only():
    per = [[1.0, 0.0, 0.0, 0.0], [0.5, 1.0, 1.0, 0.0], [0.0] * 4]
    # prompt 0: c=1, prompt 1: c=2 (0.5 is partial), prompt 2: c=0
    assert metrics.mean_pass_at_k(per, 1) == pytest.approx((0.25 + 0.5 + 0) / 3)
    assert metrics.mean_pass_at_k(per, 2) == pytest.approx((0.5 + (1 - 1 / 6) + 0) / 3)


def test_maj_at_k():
    # The majority answer "7" is right (score 1) even though the first sample is wrong.
    assert metrics.maj_at_k(["3", "7", "7", None], [0, 1, 1, 0], 4) == 1.0
    # The majority is wrong although one sample is right: pass@4 = 1, maj@4 = 0.
    assert metrics.maj_at_k(["3", "3", "7", "3"], [0, 0, 1, 0], 4) == 0.0
    # A tie goes to the answer seen first.
    assert metrics.maj_at_k(["7", "3", "3", "7"], [1, 0, 0, 1], 4) == 1.0
    assert metrics.maj_at_k(["3", "7", "7", "3"], [0, 1, 1, 0], 4) == 0.0
    # No answers at all: 0. None never votes.
    assert metrics.maj_at_k([None, None], [0, 0], 2) == 0.0
    assert metrics.maj_at_k([None, None, "5"], [0, 0, 1], 3) == 1.0
    # n = 2k: the two disjoint groups of k are averaged.
    assert metrics.maj_at_k(["1", "1", "2", "2"], [1, 1, 0, 0], 2) == 0.5
    with pytest.raises(ValueError):
        metrics.maj_at_k(["1"], [1], 2)


def test_summarize_keys_and_ranges():
    s = metrics.summarize([[1.0, 0.0], [0.0, 0.0]], [["4", "5"], [None, "2"]], [3, 5, 7, 9], 2)
    assert s["pass@1"] == 0.25 and s["pass@2"] == 0.5 and s["maj@2"] == 0.5
    assert s["mean_length"] == 6.0 and s["mean_score"] == 0.25


def test_answer_keys_for_votes():
    assert answer_key("math", " 3 + 4 = 7.\nAnswer: 7") == answer_key("math", "so \\boxed{7.0}")
    assert answer_key("math", "Answer: 1,200") == answer_key("math", "\\boxed{1200}")
    assert answer_key("math", "\\boxed{}") is None
    assert answer_key("mcq", " C") == "C"
    assert answer_key("mcq", "The answer is (B).") == "B"
    assert answer_key("code", "```python\ndef f(x):\n    return x\n```") == "def f(x):\n    return x"
    assert trim_at_stop(" 12\nQuestion: next", ["\nQuestion:"]) == " 12"


def test_held_out_split_has_zero_overlap_with_training_corpora():
    train = training_question_hashes(DEFAULT_TRAINING_SOURCES)
    assert len(train) > 6000  # math 5000 + mcq 5000 + code 2000 records, templated: many repeat
    for domain, num in (("math", 200), ("mcq", 100), ("code", 50)):
        task = held_out_task(domain, num)
        assert len(task.records) == num
        assert task.held_out["overlap"] == 0 and task.held_out["seed"] == EVAL_SEED
        assert not {question_hash(r.question) for r in task.records} & train
        assert len({question_hash(r.question) for r in task.records}) == num  # no repeats inside
        assert all(r.prompt and r.sample.get("answer" if domain != "code" else "tests") for r in task.records)


def test_check_held_out_catches_a_training_question():
    from nemo_reason.data.corpora import generate

    leaked = next(iter(generate("math", 1, 1234)))  # the first record of bundled:math
    rec = EvalRecord(leaked["question"].upper() + "  ", dict(leaked), "x.jsonl:1")  # normalisation sees through
    with pytest.raises(HeldOutError, match="x.jsonl:1"):
        check_held_out([rec])
    assert check_held_out([rec], strict=False)["overlap"] == 1
    # A run that trains on the eval seed itself: the split comes out empty and says so.
    with pytest.raises(HeldOutError, match="nothing is held out"):
        held_out_task("code", 5, [f"bundled:code:3000:{EVAL_SEED}"], max_candidates=300)


def test_training_sources_of_a_run():
    data = {"source": "synthetic", "phases": [{"blend": [{"path": "bundled:math:20000:7@difficulty>=4"},
                                                         {"path": "/data/x_text_document"}]}]}
    assert training_sources(data) == [*DEFAULT_TRAINING_SOURCES, "bundled:math:20000:7@difficulty>=4"]
    # The pipeline's steps: an sft step's bundled sources (files are not bundled), a grpo step's larger pool.
    pipeline = [{"type": "sft", "sources": ["bundled:mcq:3000", "/data/sft.jsonl"]},
                {"type": "grpo", "domains": ["math", "code"], "pool_records": 9000}, {"type": "grpo"}]
    assert training_sources(data, pipeline) == [*DEFAULT_TRAINING_SOURCES, "bundled:math:20000:7@difficulty>=4",
                                                "bundled:mcq:3000", "bundled:math:9000", "bundled:code:9000"]


def test_templates():
    rec = {"question": "2+2?", "choices": ["3", "4"]}
    assert render_prompt("Q: {question}\n{choices}\nPut it in \\boxed{}.", rec) == \
        "Q: 2+2?\nA. 3\nB. 4\nPut it in \\boxed{}."
    with pytest.raises(ConfigError, match=r"\{hint\}"):
        render_prompt("{question} {hint}", rec, "f.jsonl:3")


def test_user_jsonl_errors_name_line_and_field(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"q": "1+1?", "a": "2"}) + "\n\n" + json.dumps({"q": "2+2?"}) + "\n")
    with pytest.raises(ConfigError, match=r"qa.jsonl:1: .*question field 'question'"):
        load_jsonl_task(str(path), verifier="math")
    with pytest.raises(ConfigError, match=r"qa.jsonl:3: .*'math' needs the record's answer.*'a'.*--answer-field"):
        load_jsonl_task(str(path), question_field="q", answer_field="a", verifier="math")
    with pytest.raises(ConfigError, match="unknown reward"):
        load_jsonl_task(str(path), question_field="q", answer_field="a", verifier="maht")
    path.write_text(json.dumps({"q": "1+1?", "a": "2"}) + "\n")
    task = load_jsonl_task(str(path), question_field="q", answer_field="a", verifier="math")
    assert task.domain == "qa" and task.records[0].sample["answer"] == "2"
    assert task.records[0].prompt == "Question: 1+1?\nAnswer:"
    code = tmp_path / "code.jsonl"
    code.write_text(json.dumps({"question": "f", "tests": "assert f()"}) + "\n")
    with pytest.raises(ConfigError, match="code.jsonl:1: field 'tests' must be a list"):
        load_jsonl_task(str(code), verifier="code")


def test_table():
    res = {"k": 2, "domains": {"math": {"prompts": 4, "samples": 8, "pass@1": 0.25, "pass@2": 0.5, "maj@2": 0.25,
                                        "mean_length": 12.5, "verifier_failures": 0}}}
    table = format_table(res)
    assert "pass@2" in table.splitlines()[0] and "0.250" in table and "12.5" in table
