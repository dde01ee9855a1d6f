"""Evaluation and generation as a user runs them: an ``eval`` step in a pipeline, ``nemo-reason eval``
and ``nemo-reason generate`` on the checkpoint that pipeline left, and bad input refused (exit 2,
before any model is built). The model is barely trained: the numbers only have to be well formed;
their correctness is the unit tests' (tests/unit/test_eval_metrics.py) and the sampler's."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

PIPELINE = ("pipeline=[{type: pretrain},{type: eval, tasks: [math, mcq], num_prompts: 3, n: 2, k: 2, "
            "max_new_tokens: 12}]")
ARGS = ["trainer.max_steps=2", "trainer.log_every=1", "trainer.eval_every=0", "trainer.progress=false",
        "model.num_layers=1", "data.num_documents=300", "data.phases=[]", "trainer.global_batch_size=4",
        "trainer.micro_batch_size=4", "trainer.seq_length=64", "run.dir=r"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("eval")
    proc = run_cli(["run", "tiny", *ARGS, PIPELINE], cwd=cwd, timeout=300)
    return cwd, proc.stdout


def _check_results(res: dict, domains, k: int):
    assert sorted(res["domains"]) == sorted(domains), res["domains"].keys()
    for name in domains:
        r = res["domains"][name]
        for key in ("pass@1", f"pass@{k}", f"maj@{k}", "mean_score"):
            assert 0.0 <= r[key] <= 1.0, (name, key, r[key])
        assert r["pass@1"] <= r[f"pass@{k}"]
        assert r["mean_length"] > 0 and r["samples"] == r["prompts"] * res["n"]
        assert r["held_out"]["overlap"] == 0 and "bundled:math" in r["held_out"]["checked_against"]
        assert sum(r["finish"].values()) == r["samples"]


def test_eval_step_in_a_pipeline(run_dir):
    cwd, out = run_dir
    res = json.loads((cwd / "r" / "eval" / "eval.json").read_text())
    _check_results(res, ["math", "mcq"], 2)
    assert all(res["domains"][d]["prompts"] == 3 for d in ("math", "mcq"))
    assert "pass@1" in out and "maj@2" in out and "mean len" in out  # the table
    done = json.loads((cwd / "r" / "eval" / "done.json").read_text())
    assert done["metrics"]["math/pass@1"] == res["domains"]["math"]["pass@1"]
    assert "mcq/maj@2" in done["metrics"]
    rows = [json.loads(line) for line in (cwd / "r" / "eval" / "eval_samples.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {"prompt", "completion", "score"} <= set(rows[0])


def test_eval_and_generate_commands(run_dir):
    cwd, _ = run_dir
    ckpt = str(cwd / "r" / "pretrain")  # a step folder: its newest checkpoint
    proc = run_cli(["eval", ckpt, "--tasks", "math,mcq", "--num-prompts", "4", "-n", "2", "--max-new-tokens", "12",
                    "--output", "res.json"], cwd=cwd, timeout=300)
    _check_results(json.loads((cwd / "res.json").read_text()), ["math", "mcq"], 2)
    assert "maj@2" in proc.stdout and "prompts/s" in proc.stdout and "tokens/s" in proc.stdout

    proc = run_cli(["generate", ckpt, "--prompt", "Question: Ada has 5 apples", "--prompt", "Task: Write",
                    "--n", "2", "--max-new-tokens", "8", "--seed", "3", "--output", "out.jsonl"], cwd=cwd)
    rows = [json.loads(line) for line in (cwd / "out.jsonl").read_text().splitlines()]
    assert [(r["prompt_index"], r["sample_index"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(0 < r["tokens"] <= 8 and r["finish_reason"] in ("eos", "stop", "length") for r in rows)
    assert "prompts/s" in proc.stdout and "tokens/s" in proc.stdout


def test_bad_input_exits_2_before_the_model(run_dir, tmp_path):
    cwd, _ = run_dir
    ckpt = str(cwd / "r" / "pretrain")
    bad = tmp_path / "qa.jsonl"
    bad.write_text(json.dumps({"q": "1+1?", "a": "2"}) + "\n" + json.dumps({"q": "2+2?"}) + "\n")
    proc = run_cli(["eval", ckpt, "--input", str(bad), "--question-field", "q", "--answer-field", "a"],
                   cwd=cwd, check=False)
    assert proc.returncode == 2 and "qa.jsonl:2" in proc.stdout and "'a'" in proc.stdout, proc.stdout[-2000:]
    assert "[eval]" not in proc.stdout  # nothing generated
    proc = run_cli(["eval", ckpt, "--input", str(bad), "--question-field", "q", "--verifier", "mathh"],
                   cwd=cwd, check=False)
    assert proc.returncode == 2 and "did you mean" in proc.stdout and "math" in proc.stdout, proc.stdout[-2000:]
    proc = run_cli(["eval", ckpt, "--tasks", "maths"], cwd=cwd, check=False)
    assert proc.returncode == 2 and "did you mean math" in proc.stdout, proc.stdout[-2000:]
