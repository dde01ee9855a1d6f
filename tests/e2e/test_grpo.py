"""The `grpo` step as a user runs it, after pretraining in one pipeline: rollouts by the model being
trained, scored by a verifier, dynamic sampling with refills, group advantages, the clipped policy
loss with KL to a frozen reference, two updates per rollout, held-out pass@1; then the same step
stopped inside a rollout and resumed, equal to the uninterrupted run. The log-probs the sampler
returned and the ones the training forward recomputes agree on a rollout's first update (ratio 1,
KL 0), which is what on-policy training rests on."""

from __future__ import annotations

import pytest

from tests.conftest import read_metrics, run_cli

ARGS = ["tiny", "trainer.max_steps=2", "trainer.log_every=1", "trainer.eval_every=0", "trainer.progress=false",
        "model.num_layers=1", "data.num_documents=300", "data.phases=[]", "trainer.global_batch_size=4",
        "trainer.micro_batch_size=4", "trainer.seq_length=128", "run.dir=grpo"]
GRPO = ("{type: grpo, prompts_per_step: 2, group_size: 4, max_new_tokens: 8, dynamic_sampling: false, "
        "overrides: {trainer.global_batch_size: 8, trainer.micro_batch_size: 4, trainer.seq_length: 192}}")


def test_rollout_must_fill_the_updates(tmp_path):
    # prompts x group must fill updates_per_batch global batches: refused at composition, naming the fix.
    bad = run_cli(["run", *ARGS, "pipeline=[{type: pretrain},{type: grpo, prompts_per_step: 3, group_size: 4}]"],
                  cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "trainer.global_batch_size: 12" in bad.stdout, bad.stdout[-2000:]


# A verifier with signal for an untrained model: half the prompts (by question length) always score 0,
# so dynamic sampling drops their groups and refills; the others score the parity of the letter "e".
REWARD = '''def score(sample, completion):
    if len(sample.get("question", "")) % 2 == 0:
        return 0.0
    return float(completion.count("e") % 2)
score.fields = ()
'''
DAPO = ("{type: grpo, prompts_per_step: 2, group_size: 4, max_new_tokens: 8, updates_per_batch: 2, kl_coef: 0.1, "
        "max_refills: 2, heldout_every: 2, heldout_prompts: 4, verifiers: ['grpo_test_reward:score'], "
        "overrides: {trainer.max_steps: 4, optim.lr: 0.02, optim.warmup_steps: 0, trainer.global_batch_size: 4, "
        "trainer.micro_batch_size: 4, trainer.seq_length: 192}}")
DETERMINISTIC = ("reward", "accuracy", "reward/math", "response_length", "truncated_frac", "groups_dropped_frac",
                 "refills", "ratio_mean", "approx_kl", "clip_frac", "kl", "entropy", "policy_loss", "grad_norm",
                 "rollout_index")


def _close(a, b):
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


ARGS_DAPO = [a for a in ARGS if a not in ("trainer.progress=false", "run.dir=grpo")]


@pytest.fixture(scope="module")
def dapo(tmp_path_factory):
    """One uninterrupted pretrain -> grpo pipeline, shared by the tests below."""
    tmp_path = tmp_path_factory.mktemp("dapo")
    (tmp_path / "grpo_test_reward.py").write_text(REWARD)  # `python -m` imports from the working directory
    full = run_cli(["run", *ARGS_DAPO, "trainer.progress=true", "run.dir=full",
                    f"pipeline=[{{type: pretrain}},{DAPO}]"], cwd=tmp_path)
    return tmp_path, full, {r["step"]: r for r in read_metrics(tmp_path / "full" / "grpo")}


def test_grpo_several_updates_kl_refill_heldout(dapo):
    tmp_path, full, recs = dapo
    assert "[grpo] step 3 | reward" in full.stdout and "rollout/scoring/update" in full.stdout, full.stdout[-3000:]
    assert "2 prompts x 4 samples per rollout, 2 updates, domains math, KL k3 x 0.1" in full.stdout
    assert sorted(recs) == [1, 2, 3, 4]
    for r in recs.values():
        for key in ("reward", "accuracy", "reward/math", "accuracy/math", "response_length", "response_length_max",
                    "truncated_frac", "kl", "entropy", "clip_frac", "groups_dropped_frac", "refills",
                    "rollout_tokens_per_s", "update_tokens_per_s", "time_rollout_s", "time_scoring_s",
                    "time_update_s"):
            assert key in r, (key, r)
        assert 0 < r["entropy"] <= 7.0 and r["refills"] == 2 and r["groups_dropped_frac"] > 0, r
    assert [recs[s]["rollout_index"] for s in (1, 2, 3, 4)] == [0, 0, 1, 1]
    assert ("heldout/math/pass@1" in recs[2]) and ("heldout/math/pass@1" not in recs[3])
    # First update of a rollout: policy == rollout policy == reference.
    assert abs(recs[1]["ratio_mean"] - 1) < 1e-6 and recs[1]["kl"] < 1e-9 and recs[1]["approx_kl"] < 1e-9
    # The second update trains on the same rollout with a moved policy; later the reference is left behind.
    assert abs(recs[2]["ratio_mean"] - 1) > 1e-5 and recs[2]["approx_kl"] > 0, recs[2]
    assert abs(recs[3]["ratio_mean"] - 1) < 1e-6 and recs[3]["kl"] > 1e-6 and recs[4]["kl"] > 1e-6
    assert recs[2]["time_rollout_s"] == 0 and recs[3]["time_rollout_s"] > 0


def test_grpo_stopped_inside_a_rollout_resumes_exactly(dapo):
    tmp_path, _, recs = dapo
    args = ARGS_DAPO
    # Stopped inside the second rollout (after its first update), resumed by the same command:
    # the rest equals the uninterrupted run (stream position, rollout buffer, optimizer, seeds).
    init = tmp_path / "full" / "pretrain" / "checkpoints" / "iter_0000002"
    again = [*args, "run.dir=cut", f"run.init_checkpoint={init}", f"pipeline=[{DAPO}]"]
    run_cli(["run", *again, "trainer.exit_interval=3"], cwd=tmp_path)
    step_dir = tmp_path / "cut" / "grpo"
    assert (step_dir / "checkpoints" / "iter_0000003" / "source" / "rank_00000.pt").is_file()
    proc = run_cli(["run", *again], cwd=tmp_path)
    assert "resumed from" in proc.stdout, proc.stdout[-3000:]
    got = {r["step"]: r for r in read_metrics(step_dir)}
    assert sorted(got) == [1, 2, 3, 4]
    for s in (1, 2, 3, 4):
        for key in DETERMINISTIC + (("heldout/math/pass@1",) if s % 2 == 0 else ()):
            assert _close(got[s][key], recs[s][key]), (s, key, got[s][key], recs[s][key])
