"""MoE, expert-parallel (Parallel Folding) and fp8 settings: validated before any work, with the fix named."""

import pytest

from nemo_reason.config.schema import ConfigError
from nemo_reason.config.store import compose


def test_tiny_moe_maps_onto_megatron_moe_fields():
    from nemo_reason.models.gpt import moe_transformer_kwargs

    m = compose("tiny_moe").model
    kw = moe_transformer_kwargs(m, "local")
    assert kw["num_moe_experts"] == 4 and kw["moe_router_topk"] == 2
    assert kw["moe_shared_expert_intermediate_size"] == 64 and kw["moe_z_loss_coeff"] > 0
    assert kw["moe_grouped_gemm"] is False  # TE's grouped GEMM only with the te backend
    assert moe_transformer_kwargs(m, "te")["moe_grouped_gemm"] is True
    assert moe_transformer_kwargs(compose("tiny").model, "local") == {}


@pytest.mark.parametrize("overrides", [
    ["parallel.ep=2", "launcher.nproc_per_node=2"],
    ["parallel.tp=2", "parallel.sequence_parallel=true", "parallel.ep=2", "parallel.etp=1",
     "launcher.nproc_per_node=4"],  # folding: attention TP2 x DP2, experts ETP1 x EP2 x EDP2
    ["model.moe_router_score_function=sigmoid", "model.moe_router_enable_expert_bias=true"],
    ["model.moe_expert_capacity_factor=1.25", "model.moe_pad_expert_input_to_capacity=true"],
    ["model.moe_router_pre_softmax=true"],
])
def test_valid_moe_layouts(overrides):
    compose("tiny_moe", overrides)


@pytest.mark.parametrize("recipe,overrides,needle", [
    ("tiny", ["parallel.ep=2", "launcher.nproc_per_node=2"], "parallel.ep=2 needs MoE layers"),
    ("tiny_moe", ["parallel.ep=3", "launcher.nproc_per_node=3", "trainer.global_batch_size=24"], "num_moe_experts=4 is not divisible by parallel.ep=3"),
    ("tiny_moe", ["parallel.tp=2", "launcher.nproc_per_node=2"], "need parallel.sequence_parallel=true"),
    ("tiny_moe", ["parallel.ep=4", "launcher.nproc_per_node=2"], "etp x ep x pp"),
    ("tiny_moe", ["model.moe_router_topk=5"], "moe_router_topk=5"),
    ("tiny_moe", ["model.moe_router_enable_expert_bias=true"], "needs model.moe_router_score_function=sigmoid"),
    ("tiny_moe", ["model.moe_pad_expert_input_to_capacity=true"], "needs model.moe_expert_capacity_factor"),
    ("tiny_moe", ["model.moe_token_dispatcher_type=flex"], "allgather or alltoall"),
    ("tiny", ["model.type=moe"], "model.type=moe needs model.num_moe_experts"),
    ("tiny", ["model.num_moe_experts=4"], "use model.type=moe"),
    ("tiny_hybrid", ["model.hybrid_pattern='M*ME-M-'"], "has MoE layers (E): set model.num_moe_experts"),
])
def test_bad_moe_settings_are_named(recipe, overrides, needle):
    with pytest.raises(ConfigError) as e:
        compose(recipe, overrides)
    assert needle in str(e.value)


@pytest.mark.parametrize("overrides,needle", [
    # Pure configuration rules are checked first (so they are testable anywhere) ...
    (["trainer.fp8_first_last_layers_bf16=true"], "does not work with trainer.fp8_recipe=delayed"),
    (["trainer.fp8_recipe=tensorwise", "trainer.fp8_first_last_layers_bf16=true",
      "trainer.fp8_num_layers_at_start_in_bf16=5"], "exceeds the layers per pipeline stage (4)"),
    (["model.hidden_size=72", "model.num_attention_heads=4"], "not a multiple of 16"),
    (["trainer.fp8_recipe=nvfp4"], "use delayed, tensorwise, blockwise or mxfp8"),
    # ... then the machine (the preflight, where the job runs): no CUDA here.
    (["trainer.fp8_recipe=blockwise"], "needs an NVIDIA GPU"),
    ([], "needs an NVIDIA GPU"),
])
def test_fp8_fails_before_any_work_with_the_reason(overrides, needle):
    from nemo_reason.preflight import preflight

    with pytest.raises(ConfigError) as e:
        preflight(compose("tiny", ["trainer.precision=fp8", *overrides]))
    assert needle in str(e.value)


def test_fp8_fields_map_onto_megatron_names():
    from nemo_reason.backend.fp8 import fp8_transformer_kwargs

    t = compose("tiny").trainer
    assert fp8_transformer_kwargs(t) == {}
    t.precision, t.fp8_recipe, t.fp8_first_last_layers_bf16, t.fp8_param_gather = "fp8", "tensorwise", True, True
    kw = fp8_transformer_kwargs(t)
    assert kw["fp8"] == "hybrid" and kw["fp8_recipe"] == "tensorwise" and kw["fp8_param"] is True
    assert kw["first_last_layers_bf16"] and kw["num_layers_at_start_in_bf16"] == 1
    from megatron.core.transformer.transformer_config import TransformerConfig

    fields = TransformerConfig.__dataclass_fields__
    assert all(k in fields for k in kw), [k for k in kw if k not in fields]
