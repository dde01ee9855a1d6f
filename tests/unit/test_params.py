"""Parameter counts: the published Nemotron-H totals from their recipes, and exact agreement with the
models Megatron builds."""

import pytest

from nemo_reason.config.store import compose
from nemo_reason.planner.params import param_breakdown, param_count
from tests.unit.megatron_env import megatron_single  # noqa: F401

# Nemotron-H (arXiv:2504.03624; model cards "8B" / "56B model parameters"), 131072-token vocabulary.
PUBLISHED = {"nemotron_h_8b": 8e9, "nemotron_h_56b": 56e9}
NEMOTRON_H_VOCAB = 131072


@pytest.mark.parametrize("recipe", sorted(PUBLISHED))
def test_published_nemotron_h_sizes(recipe):
    m = compose(recipe).model
    total = param_count(m, NEMOTRON_H_VOCAB)
    assert abs(total - PUBLISHED[recipe]) <= 0.02 * PUBLISHED[recipe], total
    parts = param_breakdown(m, NEMOTRON_H_VOCAB)
    assert parts["mamba"] > 0 and parts["attention"] > 0 and parts["mlp"] > 0


@pytest.mark.parametrize("recipe,overrides", [
    ("tiny_hybrid", []),
    ("tiny_hybrid", ["model.normalization=LayerNorm", "model.add_bias_linear=true", "model.activation=swiglu"]),
    ("tiny", []),
    ("tiny_moe", ["model.moe_shared_expert_gate=true"]),
    ("tiny_moe", ["model.moe_layer_freq=2", "model.moe_shared_expert_intermediate_size=null"]),
])
def test_count_equals_the_built_model(megatron_single, recipe, overrides):  # noqa: F811
    from nemo_reason.data.tokenizer import padded_vocab_size
    from nemo_reason.models import build_model

    cfg = compose(recipe, overrides)
    model = build_model(cfg, 260)[0]
    built = sum(p.numel() for p in model.parameters())
    padded = padded_vocab_size(260, cfg.model.make_vocab_size_divisible_by, 1)
    assert param_count(cfg.model, padded) == built
