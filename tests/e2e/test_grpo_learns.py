"""GRPO learns, cheaply: a barely pretrained one-layer model, rewarded by a custom verifier given as an
import path (``module:function``, through the step's ``verifiers``) for the share of digits in its
completion, raises its mean reward clearly within a few dozen on-policy steps. Everything is seeded
(pretraining, prompts, the sampler's draws), so the run is the same every time and cannot flake; the
margin asked for is a fraction of the rise the run shows. The held-out math demonstration (pretrain +
SFT + GRPO on the bundled math, evaluated on 256 held-out problems) is recipes/tiny_grpo_math.yaml,
recorded in docs/post-training.md: minutes, not seconds."""

from __future__ import annotations

from tests.conftest import REPO, read_metrics, run_cli

STEPS = 30


def score_digits(sample: dict, completion: str) -> float:
    """The fraction of the completion's non-space characters that are digits (0 for an empty one)."""
    chars = [c for c in completion if not c.isspace()]
    return sum(c.isdigit() for c in chars) / len(chars) if chars else 0.0


ARGS = ["tiny", "run.dir=learns", "model.num_layers=1", "data.num_documents=300", "data.phases=[]",
        "trainer.max_steps=20", "trainer.log_every=1", "trainer.eval_every=0", "trainer.progress=false",
        "trainer.global_batch_size=8", "trainer.micro_batch_size=8", "trainer.seq_length=128"]
GRPO = ("{type: grpo, domains: [math], verifiers: ['tests.e2e.test_grpo_learns:score_digits'], "
        "prompts_per_step: 8, group_size: 4, max_new_tokens: 8, temperature: 1.0, "
        f"overrides: {{trainer.max_steps: {STEPS}, trainer.global_batch_size: 32, trainer.micro_batch_size: 32, "
        "trainer.seq_length: 128, optim.lr: 3.0e-3, optim.min_lr: 3.0e-3, optim.warmup_steps: 0}}")


def test_mean_reward_rises(tmp_path):
    run_cli(["run", *ARGS, f"pipeline=[{{type: pretrain}},{GRPO}]"], cwd=tmp_path,
            env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    recs = read_metrics(tmp_path / "learns" / "grpo")
    reward = [r["reward"] for r in recs]
    assert len(reward) == STEPS, reward
    first, last = sum(reward[:5]) / 5, sum(reward[-5:]) / 5
    assert last > first + 0.25 and last > 0.5, (first, last, reward)
