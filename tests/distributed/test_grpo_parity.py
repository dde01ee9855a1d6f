"""A GRPO update on a fixed rollout is the same under TP=2 and DP=2 as in one process.

The rollout is fixed (tokens, response mask, advantages and "old" log-probs near the untrained
model's, so some ratios clip and some do not): this isolates the update from sampling. Two
optimizer steps of the real step code (``build_train_state`` + ``train_step`` over
``grpo_forward_step``): the policy loss, clip fraction, entropy and gradient norm of both steps
agree with one process, and the second step's numbers can only agree if the first update did.
Dense at TP=2 (vocab-sharded log-probs and entropy) and DP=2 (micro-batches split over ranks,
gradients averaged); hybrid at TP=2; MoE with expert parallelism over the two ranks.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from tests.spawn import spawn
from tests.unit.megatron_env import megatron_single  # noqa: F401

VOCAB = 260
GLOBAL, MBS, SEQ = 8, 2, 24
CASES = {
    "dense": ("tiny", ["model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=128"]),
    "hybrid": ("tiny_hybrid", ["model.num_layers=4", "model.hybrid_pattern='M*M-'", "model.mamba_chunk_size=8"]),
    "moe": ("tiny_moe", ["model.num_layers=2"]),
}
# (case, tp, ep) per two-rank layout; every case also runs in one process.
LAYOUTS = [("dense", 2, 1), ("dense", 1, 1), ("hybrid", 2, 1), ("moe", 1, 2)]
METRICS = ("policy_loss", "clip_frac", "entropy")


def _rollout() -> dict:
    """Eight right-padded sequences: a prompt, a response (loss mask), and padding."""
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(1, VOCAB, (GLOBAL, SEQ), generator=g)
    labels = torch.roll(tokens, -1, dims=1)
    mask = torch.zeros(GLOBAL, SEQ)
    for i in range(GLOBAL):
        start, length = 4 + i % 3, 6 + 2 * (i % 4)
        mask[i, start:start + length] = 1.0
    # Near log(1/V) of an untrained model: ratios spread on both sides of the clip range.
    old = (-torch.log(torch.tensor(float(VOCAB))) + 0.3 * torch.randn(GLOBAL, SEQ, generator=g)) * mask
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.5, -1.5, 0.25, -0.25])
    return {"tokens": tokens, "labels": labels, "loss_mask": mask, "old_logprobs": old,
            "position_ids": torch.arange(SEQ).expand(GLOBAL, SEQ).contiguous(), "advantage": adv}


def _updates(case: str, tp: int, ep: int, world: int, init: str) -> list:
    """Two updates of ``case`` at this layout, from the weights in ``init/<case>`` (saved there
    first by the one-process run: expert weights are initialised per expert-parallel rank, so only
    a loaded checkpoint gives every layout the same model)."""
    from functools import partial

    from nemo_reason.backend import dist as bdist
    from nemo_reason.checkpoint import io as ckpt
    from nemo_reason.config.store import compose
    from nemo_reason.parallel import ParallelDims
    from nemo_reason.stages import StepContext
    from nemo_reason.stages.grpo import GRPOConfig, grpo_forward_step
    from nemo_reason.training.state import build_train_state
    from nemo_reason.training.step import train_step

    recipe, over = CASES[case]
    cfg = compose(recipe, [*over, f"parallel.tp={tp}", f"parallel.ep={ep}", f"launcher.nproc_per_node={world}",
                           f"trainer.global_batch_size={GLOBAL}", f"trainer.micro_batch_size={MBS}",
                           f"trainer.seq_length={SEQ}", "optim.lr=1e-3", "optim.warmup_steps=0", "optim.schedule=constant",
                           "run.resume=false"])
    dims = ParallelDims.from_config(cfg.parallel, world)
    dims.init()
    bdist.seed_everything(cfg.run.seed)
    try:
        with tempfile.TemporaryDirectory() as d:
            ctx = StepContext(dims=dims, run_dir=Path(d), step_dir=Path(d), step_name="grpo")
            root = Path(init) / case
            first = not (root / "iter_0000000").exists()
            state = build_train_state(cfg, ctx, VOCAB, init_checkpoint=None if first else root / "iter_0000000")
            if first:
                ckpt.save(root, 0, 0, state.model, state.optimizer, state.scheduler, "{}", bdist.get_rng_state())
            step_cfg = GRPOConfig(type="grpo", prompts_per_step=2, group_size=4)
            batch = _rollout()
            rows = GLOBAL // dims.dp
            mine = {k: v[dims.dp_rank * rows:(dims.dp_rank + 1) * rows] for k, v in batch.items()}
            micro = [{k: v[i:i + MBS] for k, v in mine.items()} for i in range(0, rows, MBS)]
            out = []
            for _ in range(2):
                r = train_step(state, partial(grpo_forward_step, step_cfg), iter(micro), len(micro), SEQ, MBS)
                assert r.update_ok
                out.append({**{k: r.metrics[k] for k in METRICS if k in r.metrics}, "grad_norm": r.grad_norm})
            return out
    finally:
        ParallelDims.destroy()


def _two_ranks(rank, init):
    from nemo_reason.backend import dist as bdist
    from nemo_reason.backend import prepare

    torch.set_num_threads(1)
    bdist.init_process_group()
    prepare("local")
    try:
        return {f"{c}/tp{tp}/ep{ep}": _updates(c, tp, ep, 2, init) for c, tp, ep in LAYOUTS}
    finally:
        bdist.destroy_process_group()


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("grpo_parity_init")


@pytest.fixture(scope="module")
def one_process(megatron_single, init_dir):  # noqa: F811
    return {c: _updates(c, 1, 1, 1, str(init_dir)) for c in CASES}


def test_grpo_update_under_tp2_dp2_ep2_equals_one_process(one_process, init_dir):
    results = spawn(_two_ranks, 2, args=(str(init_dir),), timeout=300)
    for key, got in results[0].value.items():
        case = key.split("/")[0]
        want = one_process[case]
        assert got == results[1].value[key], key  # ranks agree
        for step, (g, w) in enumerate(zip(got, want)):
            assert set(g) == set(w) and "policy_loss" in g, (key, g)
            for k in w:
                tol = 1e-5 * max(1.0, abs(w[k]))
                assert abs(g[k] - w[k]) <= tol, (key, step, k, g[k], w[k])
        assert 0 < want[0]["clip_frac"] < 1, want  # the fixed rollout exercises both branches
