"""Sampling at TP=2 equals one process: the same weights (Megatron initialises full weights on the
CPU and splits them, so the same seed builds the same model at every TP size), the same greedy and
seeded samples, the same log-probs. Dense, hybrid, and MoE with sequence parallelism (switched off
for generation outside the MoE layers)."""

import pytest
import torch

from tests.spawn import spawn
from tests.unit.megatron_env import in_layout, megatron_single  # noqa: F401

CASES = {
    "dense": ("tiny", ["model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=128"]),
    "hybrid": ("tiny_hybrid", ["model.num_layers=4", "model.hybrid_pattern='M*M-'"]),
    "moe_sp": ("tiny_moe", ["model.num_layers=2", "parallel.sequence_parallel=true"]),
}
PROMPTS = [[72, 101, 108, 108, 111], [65] * 9, [120, 121]]


def _sample_all(tp: int) -> dict:
    from nemo_reason.config.store import compose
    from nemo_reason.data.tokenizer import build_tokenizer
    from nemo_reason.models import build_model
    from nemo_reason.rollout.sampler import SamplingParams, generate

    tok = build_tokenizer("byte")
    out = {}
    for name, (recipe, over) in CASES.items():
        torch.manual_seed(0)
        layout = [f"parallel.tp={tp}", f"launcher.nproc_per_node={tp}"]
        cfg = compose(recipe, [*over, *layout] if tp > 1 else [o for o in over if "sequence" not in o])
        model = build_model(cfg, 260)[0]
        greedy = generate(model, tok, PROMPTS, SamplingParams(greedy=True, max_new_tokens=8))
        sampled = generate(model, tok, PROMPTS, SamplingParams(n=2, max_new_tokens=8, seed=7, top_p=0.9))
        out[name] = [(s.tokens, s.logprobs) for s in greedy + sampled]
    return out


def _tp2_worker(rank):
    return in_layout(_sample_all, 2, 2)


@pytest.fixture(scope="module")
def tp1(megatron_single):  # noqa: F811
    return _sample_all(1)


def test_tp2_samples_equal_one_process(tp1):
    results = spawn(_tp2_worker, 2, timeout=240)
    for name in CASES:  # both ranks sampled the same tokens
        assert [t for t, _ in results[0].value[name]] == [t for t, _ in results[1].value[name]], name
    for name in CASES:
        for (ref_tokens, ref_lp), (tokens, lp) in zip(tp1[name], results[0].value[name]):
            assert tokens == ref_tokens, name
            assert max(abs(a - b) for a, b in zip(lp, ref_lp)) <= 1e-5, name
