"""Pruning targets without a model: legal values, the budget search against the planner's count, and
targets the layout cannot hold refused at composition (exit 2) naming the legal values."""

import pytest

from nemo_reason.compress.targets import layout_errors, pruned_config, sizes_for_budget
from nemo_reason.config.errors import ConfigError
from nemo_reason.config.store import compose
from nemo_reason.planner.params import param_count

V = 1024  # the bundled tokenizer's padded vocabulary


@pytest.mark.parametrize("recipe,budget", [("tiny", 4e5), ("tiny_hybrid", 5.2e5), ("tiny_hybrid", 3e5)])
def test_budget_lands_within_3_percent_below(recipe, budget):
    m = compose(recipe, []).model
    sizes = sizes_for_budget(m, V, budget, fixed={})
    got = param_count(pruned_config(m, sizes), V)
    assert 0.97 * budget <= got <= budget, (sizes, got)
    assert not layout_errors(m, sizes)
    if m.type == "hybrid":
        assert sizes["mamba_num_heads"] % m.mamba_num_groups == 0


def test_budget_keeps_explicit_targets_and_refuses_the_unreachable():
    m = compose("tiny_hybrid", []).model
    sizes = sizes_for_budget(m, V, 5e5, fixed={"mamba_head_dim": 16})
    assert sizes["mamba_head_dim"] == 16
    with pytest.raises(ValueError, match="smallest model"):
        sizes_for_budget(m, V, 1e4, fixed={})


def test_layout_errors_name_the_legal_values():
    m = compose("tiny_hybrid", []).model  # 4 heads in 2 query groups; 8 Mamba heads in 2 groups
    errs = layout_errors(m, {"num_attention_heads": 3, "mamba_num_heads": 5, "hidden_size": 256})
    assert len(errs) == 3
    assert "legal values are 2, 4 (multiples of num_query_groups=2)" in errs[0]
    assert "legal values are 2, 4, 6, 8 (multiples of mamba_num_groups=2)" in errs[1]
    assert "hidden_size=256" in errs[2]
    # At TP=4 (a later step's layout) only multiples of 4 remain.
    assert "legal values are 4, 8" in layout_errors(m, {"mamba_num_heads": 6}, tp=4)[0]


def _pipeline(prune: str) -> str:
    return f"pipeline=[{{type:pretrain}},{{type:prune,{prune}}}]"


def test_bad_targets_fail_at_composition():
    compose("tiny_hybrid", [_pipeline("mamba_num_heads:4,mamba_head_dim:16")])
    with pytest.raises(ConfigError, match=r"mamba_num_heads=3 cannot be held: legal values are 2, 4, 6, 8"):
        compose("tiny_hybrid", [_pipeline("mamba_num_heads:3")])
    with pytest.raises(ConfigError, match="num_attention_heads=3 cannot be held: legal values are 2, 4"):
        compose("tiny", [_pipeline("num_attention_heads:3")])
    with pytest.raises(ConfigError, match="does not choose a hybrid's depth"):
        compose("tiny_hybrid", [_pipeline("params:5e5,num_layers:5")])
    with pytest.raises(ConfigError, match="give target sizes"):
        compose("tiny", [_pipeline("calibration_batches:2")])


def test_the_cli_exits_2_on_a_bad_target(tmp_path):
    from tests.conftest import run_cli

    proc = run_cli(["show", "tiny_hybrid_prune", "pipeline.1.mamba_num_heads=3"], cwd=tmp_path, check=False, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert "legal values are 2, 4, 6, 8" in proc.stdout


def test_prune_under_tensor_parallelism_is_refused_naming_the_fix():
    """modelopt's Minitron prunes at TP=1 only: a prune step at tp=2 exits 2 at composition, naming the
    step override that fixes it; with it, the pipeline composes and the steps after run at tp=2."""
    from nemo_reason.stages.prune import later_layout

    tp2 = ["parallel.tp=2", "launcher.nproc_per_node=2"]
    with pytest.raises(ConfigError, match=r"TP=1 only.*overrides: \{parallel.tp: 1\}.*reshards on load"):
        compose("tiny", [*tp2, _pipeline("hidden_size:96")])
    cfg = compose("tiny", [*tp2, "pipeline=[{type: pretrain}, {type: prune, hidden_size: 96, "
                                 "overrides: {parallel.tp: 1}}, {type: perplexity}]"])
    assert cfg.parallel.tp == 2 and later_layout(cfg) == (2, 1)
