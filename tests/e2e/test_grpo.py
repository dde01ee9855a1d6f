"""The `grpo` step as a user runs it, after pretraining in one pipeline: on-policy rollouts by the
model being trained, scored by the math verifier, group advantages, the clipped policy loss. The
log-probs the sampler returned and the ones the training forward recomputes agree (ratio 1, KL 0),
which is what strict on-policy training rests on."""

from __future__ import annotations

from tests.conftest import read_metrics, run_cli

ARGS = ["tiny", "trainer.max_steps=2", "trainer.log_every=1", "trainer.eval_every=0", "trainer.progress=false",
        "model.num_layers=1", "data.num_documents=300", "data.phases=[]", "trainer.global_batch_size=4",
        "trainer.micro_batch_size=4", "trainer.seq_length=128", "run.dir=grpo"]
GRPO = ("{type: grpo, prompts_per_step: 2, group_size: 4, max_new_tokens: 8, dynamic_sampling: false, "
        "overrides: {trainer.global_batch_size: 8, trainer.micro_batch_size: 4, trainer.seq_length: 192}}")


def test_pretrain_then_grpo(tmp_path):
    proc = run_cli(["run", *ARGS, f"pipeline=[{{type: pretrain}},{GRPO}]"], cwd=tmp_path)
    assert "2 prompts x 4 samples per step, domains math" in proc.stdout, proc.stdout[-3000:]
    recs = read_metrics(tmp_path / "grpo" / "grpo")
    assert [r["step"] for r in recs] == [1, 2]
    for r in recs:
        assert 0.0 <= r["reward"] <= 1.0 and r["response_length_max"] <= 8
        assert abs(r["ratio_mean"] - 1.0) < 1e-5 and abs(r["approx_kl"]) < 1e-6, r
        assert r["groups_dropped_frac"] == 0.0 and "clip_frac" in r
    # prompts x group must fill the global batch: refused at composition, naming the fix.
    bad = run_cli(["run", *ARGS, "pipeline=[{type: pretrain},{type: grpo, prompts_per_step: 3, group_size: 4}]"],
                  cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "trainer.global_batch_size: 12" in bad.stdout, bad.stdout[-2000:]
