"""Hybrid configs: patterns and ratios allocate as Megatron does, and bad input fails at composition
with a message that names the key and the fix."""

import pytest

from nemo_reason.config.schema import ConfigError
from nemo_reason.config.store import compose
from nemo_reason.models.pattern import PatternError, allocate, describe


@pytest.mark.parametrize("n,attn,mlp,pattern", [
    (10, 0.2, 0.0, None), (48, 0.1, 0.0, None), (48, 0.5, 0.2, None), (10, 0.0, 0.3, None),
    (10, 0.3, 0.3, None), (7, 0.0, 0.0, None), (52, 0.08, 0.46, None),
    (9, 0.0, 0.0, "M*-M*-M*-"), (10, 0.3, 0.2, "MMM*-*M*M-"),
    (52, 0.0, 0.0, "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-"),
])
def test_allocation_matches_megatron(n, attn, mlp, pattern):
    from megatron.core.ssm.mamba_hybrid_layer_allocation import allocate_layers

    assert allocate(n, attn, mlp, pattern) == allocate_layers(n, attn, mlp, pattern)


def test_describe():
    assert describe(allocate(8, 0.25, 0.25)) == "MM*-M*M- (4 Mamba-2, 2 attention, 2 MLP)"


@pytest.mark.parametrize("args,needle", [
    ((5, 0.0, 0.0, "M-M*"), "has 4 layers but model.num_layers=5; set model.num_layers=4"),
    ((4, 0.0, 0.0, "M-X*"), "'X' is not a layer symbol"),
    ((4, 0.6, 0.6, None), "exceeds 1"),
    ((10, 0.3, 0.2, "MMMMMMMMMM"), "the ratios ask for 3 / 2"),
])
def test_pattern_errors(args, needle):
    with pytest.raises(PatternError) as e:
        allocate(*args)
    assert needle in str(e.value)


def test_tiny_hybrid_is_nemotron_h_style():
    m = compose("tiny_hybrid").model
    assert m.type == "hybrid" and m.position_embedding_type == "none" and m.normalization == "RMSNorm"
    assert m.activation == "squared_relu" and not m.add_bias_linear and m.untie_embeddings_and_output_weights
    assert set(m.hybrid_pattern) == {"M", "*", "-"} and m.mamba_num_groups % 2 == 0  # TP=2 works


def test_ratios_instead_of_a_pattern():
    cfg = compose("tiny_hybrid", ["model.hybrid_pattern=null", "model.num_layers=8",
                                  "model.hybrid_attention_ratio=0.25", "model.hybrid_mlp_ratio=0.25"])
    from nemo_reason.models.hybrid import layer_types

    assert "".join(layer_types(cfg)) == "MM*-M*M-"


@pytest.mark.parametrize("overrides,needle", [
    (["model.hybrid_pattern=M-M*"], "has 4 layers but model.num_layers=7; set model.num_layers=4"),
    (["model.hybrid_pattern=M-M*-ME", ], "MoE layers (E)"),
    (["model.mamba_num_groups=3"], "Mamba heads (8) are not divisible by model.mamba_num_groups=3"),
    (["model.mamba_num_heads=null", "model.mamba_head_dim=48"], "set model.mamba_num_heads"),
    (["model.mamba_num_groups=1", "model.mamba_num_heads=4", "parallel.tp=2", "launcher.nproc_per_node=2"],
     "model.mamba_num_groups=1 is not divisible by parallel.tp=2"),
    (["model.mamba_num_groups=4", "parallel.tp=4", "launcher.nproc_per_node=4", "model.num_attention_heads=4",
      "model.num_query_groups=4", "model.mamba_num_heads=6", "model.mamba_head_dim=16"],
     "Mamba heads (6) are not divisible by model.mamba_num_groups=4"),
    (["model.qk_layernorm=true"], "qk_layernorm"),
    (["model.type=hybridd"], "model.type='hybridd'"),
])
def test_hybrid_config_errors_name_the_fix(overrides, needle):
    with pytest.raises(ConfigError) as e:
        compose("tiny_hybrid", overrides)
    assert needle in str(e.value)


def test_interleaved_pipeline_is_refused_for_hybrids():
    with pytest.raises(ConfigError, match="no interleaved pipeline"):
        compose("tiny_hybrid", ["model.hybrid_pattern=M-M*-M-M", "model.num_layers=8", "parallel.pp=2",
                                "parallel.vpp=2", "launcher.nproc_per_node=2", "trainer.global_batch_size=32"])


@pytest.mark.parametrize("recipe,layers,tp", [("nemotron_h_8b", 52, 2), ("nemotron_h_56b", 118, 8)])
def test_published_recipes_resolve(recipe, layers, tp):
    cfg = compose(recipe)
    m = cfg.model
    assert m.type == "hybrid" and m.num_layers == len(m.hybrid_pattern) == layers
    assert cfg.parallel.tp == tp and m.mamba_num_groups % tp == 0 and m.position_embedding_type == "none"
