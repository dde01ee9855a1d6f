"""Nemotron-H bridge (``nemotron_h``) against transformers' ``NemotronHForCausalLM``.

A tiny hybrid (pattern ``M*M-``: Mamba-2 with 2 groups, attention without RoPE, squared-ReLU MLP;
hidden 64, vocab 300) is imported with the parity gate and exported again bit for bit; our own
``tiny_hybrid`` goes to HF and back bit for bit; greedy rollout equals transformers' greedy
``generate`` (its CPU path is the PyTorch fallback of the Mamba mixer: no mamba-ssm or
causal-conv1d here); options we cannot represent stop with the field and value.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.unit.bridge_tensors import hf_tensors, our_tensors
from tests.unit.hf_tiny import TINY, assert_greedy_equals_transformers, hf_folder, tiny_tokenizer
from tests.unit.megatron_env import megatron_single  # noqa: F401

transformers = pytest.importorskip("transformers")

KINDS = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}
MAMBA = dict(ssm_state_size=16, mamba_num_heads=8, mamba_head_dim=16, n_groups=2, chunk_size=16, head_dim=16)


@functools.lru_cache(maxsize=1)
def _tiny_hybrid():
    from nemo_reason.config.store import compose

    return compose("tiny_hybrid", []).model


def _config(pattern: str = "M*M-", **extra):
    base = {**TINY, "num_hidden_layers": len(pattern)}
    return transformers.NemotronHConfig(**base, **MAMBA, layers_block_type=[KINDS[s] for s in pattern], **extra)


def _randomise_mixers(folder: Path, seed: int = 1) -> None:
    """HF initialises A_log = log(1..H), D = 1, dt_bias = 1, e_score_correction_bias = 0: make them
    all different per head so a swapped or mis-sliced head shows."""
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(seed)
    for shard in sorted(folder.glob("*.safetensors")):
        sd = load_file(str(shard))
        for k, v in sd.items():
            if k.endswith(("mixer.A_log", "mixer.D", "mixer.dt_bias", "e_score_correction_bias")):
                sd[k] = v + 0.1 * torch.randn(v.shape, generator=g)
        save_file(sd, str(shard), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def converted(tmp_path_factory, megatron_single):  # noqa: F811
    from nemo_reason.bridge.convert import export_hf, import_hf

    root = tmp_path_factory.mktemp("bridge_nemotron_h")
    tok = tiny_tokenizer(root / "tokenizer")
    hf = hf_folder(root / "hf", _config(), tok)
    _randomise_mixers(hf)
    imp = import_hf(hf, root / "ckpt", log=None)
    export_hf(root / "ckpt", root / "out", verify=False, log=None)
    return dict(root=root, tok=tok, hf=hf, ckpt=root / "ckpt", out=root / "out", imp=imp)


def _passed(report):
    assert report["passed"] and report["first_divergence"] is None
    assert report["max_abs_diff"] <= 1e-4 * report["scale"]
    assert report["scale"] > 0.1
    assert [p for p in report["points"] if p.startswith("layer")] == [f"layer {i}" for i in range(4)]


def test_import_passes_the_parity_gate(converted):
    from nemo_reason.checkpoint.meta import read_meta

    _passed(converted["imp"]["parity"])
    m = read_meta(converted["ckpt"]).model
    assert (m.type, m.hybrid_pattern, m.num_layers, m.position_embedding_type) == ("hybrid", "M*M-", 4, "none")
    assert (m.mamba_num_groups, m.mamba_num_heads, m.mamba_head_dim, m.mamba_state_dim, m.kv_channels) == \
        (2, 8, 16, 16, 16)
    assert (m.activation, m.normalization, m.num_query_groups) == ("squared_relu", "RMSNorm", 2)


def test_hf_ours_hf_is_bit_identical(converted):
    a, b = hf_tensors(converted["hf"]), hf_tensors(converted["out"])
    assert sorted(a) == sorted(b) and any(k.endswith("mixer.conv1d.bias") for k in a)
    assert [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])] == []
    doc = json.loads((converted["out"] / "config.json").read_text())
    assert doc["layers_block_type"] == [KINDS[s] for s in "M*M-"] and doc["hybrid_override_pattern"] == "M*M-"
    back = transformers.AutoConfig.from_pretrained(str(converted["out"]))
    assert back.layers_block_type == doc["layers_block_type"] and back.n_groups == 2


def test_tiny_hybrid_goes_to_hf_and_back_bit_identical(converted):
    """Our tiny_hybrid recipe's model as it is (pattern M-M*-M-, 8 heads of 32, 2 groups; exported
    without a recorded HF architecture, so the bridge is found from the ModelConfig) -> HF -> ours."""
    from nemo_reason.bridge import bridge_for_model
    from nemo_reason.bridge.convert import _hf_tokenizer_record, export_hf, import_hf
    from nemo_reason.bridge.megatron_side import build_our_model, save_checkpoint

    root = converted["root"]
    m = _tiny_hybrid()
    assert type(bridge_for_model(m)).__name__ == "NemotronHBridge"
    torch.manual_seed(11)
    model = build_our_model(m, 300)
    saved = save_checkpoint(root / "own", model, m, _hf_tokenizer_record(converted["tok"]))
    before = our_tensors(saved)
    export_hf(saved, root / "own_hf", verify=False, log=None)
    assert json.loads((root / "own_hf" / "config.json").read_text())["hybrid_override_pattern"] == "M-M*-M-"
    import_hf(root / "own_hf", root / "own_back", verify=False, log=None)
    after = our_tensors(root / "own_back")
    assert sorted(before) == sorted(after)
    assert [k for k in before if not torch.equal(before[k], after[k])] == []


def test_greedy_rollout_equals_transformers_generate(converted):
    """Our rollout (Mamba conv/SSM states + KV cache, right-padded batch) against transformers'
    generate, one prompt at a time (its Mamba cache path: the PyTorch fallback on CPU)."""
    c = converted
    assert_greedy_equals_transformers(c["ckpt"], c["hf"], (6, 19, 2), max_new_tokens=10)


def test_older_configs_with_hybrid_override_pattern():
    from nemo_reason.bridge.base import HFConfig
    from nemo_reason.bridge.nemotron_h import NemotronHBridge

    doc = _config().to_dict()
    doc.pop("layers_block_type", None)
    doc.update(hybrid_override_pattern="M-M*-", num_hidden_layers=5)
    m = NemotronHBridge().to_model_config(HFConfig(doc))
    assert (m.hybrid_pattern, m.num_layers) == ("M-M*-", 5)


def _edited(converted, dst: Path, config, drop=()):
    shutil.copytree(converted["hf"], dst)
    doc = json.loads((dst / "config.json").read_text())
    for k in drop:
        doc.pop(k, None)
    doc.update(config)
    (dst / "config.json").write_text(json.dumps(doc))
    return dst


BAD = [
    ({"layer_norm_epsilon": 1e-6}, (), "layer_norm_epsilon=1e-06"),
    ({"conv_kernel": 3}, (), "conv_kernel=3"),
    ({"use_bias": True}, (), "use_bias=True"),
    ({"use_conv_bias": False}, (), "use_conv_bias=False"),
    ({"mlp_hidden_act": "gelu"}, (), "mlp_hidden_act='gelu'"),
    ({"mamba_hidden_act": "relu"}, (), "mamba_hidden_act='relu'"),
    ({"num_nextn_predict_layers": 1}, (), "num_nextn_predict_layers=1"),
    ({"residual_in_fp32": True}, (), "residual_in_fp32=True"),
    ({"hybrid_override_pattern": "M*|M-"}, ("layers_block_type",), "hybrid_override_pattern='M*|M-'"),
    ({"layers_block_type": ["linear_attention", "cross_attention", "linear_attention", "mlp"]}, (),
     "cross_attention"),
    ({"layers_block_type": ["linear_attention", "full_attention", "linear_attention", "moe"], "n_group": 2,
      "topk_group": 1}, (), "n_group=2"),
    ({"layers_block_type": ["linear_attention", "full_attention", "linear_attention", "moe"],
      "moe_latent_size": 32, "n_group": 1}, (), "moe_latent_size=32"),
    # 8 Mamba heads in 3 groups: every group needs the same number of heads.
    ({"n_groups": 3}, (), "mamba_num_groups=3"),
]


@pytest.mark.parametrize("edit,drop,said", BAD, ids=[next(iter(e)) + str(i) for i, (e, _, _) in enumerate(BAD)])
def test_unrepresentable_config_stops_with_field_and_value(converted, tmp_path, edit, drop, said):
    from nemo_reason.bridge import BridgeError
    from nemo_reason.bridge.convert import import_hf

    folder = _edited(converted, tmp_path / "hf", edit, drop)
    with pytest.raises(BridgeError) as err:
        import_hf(folder, folder.parent / f"{folder.name}_ckpt", log=None)
    assert said in str(err.value)
    assert not (folder.parent / f"{folder.name}_ckpt").exists()


def test_export_refuses_what_nemotron_h_cannot_hold():
    import dataclasses

    from nemo_reason.bridge import BridgeError
    from nemo_reason.bridge.nemotron_h import NemotronHBridge

    m = _tiny_hybrid()
    NemotronHBridge().check_export(m)
    for field, value in (("position_embedding_type", "rope"), ("activation", "swiglu"),
                         ("layernorm_epsilon", 1e-6), ("add_bias_linear", True)):
        with pytest.raises(BridgeError, match=f"model.{field}="):
            NemotronHBridge().check_export(dataclasses.replace(m, **{field: value}))
    with pytest.raises(BridgeError, match="model.type='moe'"):
        NemotronHBridge().check_export(dataclasses.replace(m, type="moe", num_moe_experts=4))


@pytest.mark.slow
def test_export_passes_the_parity_gate(converted):
    from nemo_reason.bridge.convert import export_hf

    _passed(export_hf(converted["ckpt"], converted["root"] / "gated", log=None)["parity"])


@pytest.mark.slow
def test_moe_layers_import_and_export(converted):
    """Nemotron-3 style MoE layers (E): sigmoid router with expert-score bias, renormalised top-2
    scaled by routed_scaling_factor, squared-ReLU routed and shared experts."""
    from nemo_reason.bridge.convert import export_hf, import_hf
    from nemo_reason.checkpoint.meta import read_meta

    root = converted["root"]
    cfg = _config("M*ME", n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                  moe_shared_expert_intermediate_size=48, routed_scaling_factor=2.5)
    hf = hf_folder(root / "moe_hf", cfg, converted["tok"])
    _randomise_mixers(hf)
    _passed(import_hf(hf, root / "moe_ckpt", log=None)["parity"])
    m = read_meta(root / "moe_ckpt").model
    assert (m.moe_router_score_function, m.moe_router_enable_expert_bias, m.moe_router_topk_scaling_factor) == \
        ("sigmoid", True, 2.5)
    _passed(export_hf(root / "moe_ckpt", root / "moe_out", log=None)["parity"])
    a, b = hf_tensors(hf), hf_tensors(root / "moe_out")
    assert sorted(a) == sorted(b) and [k for k in a if not torch.equal(a[k], b[k])] == []


def _tp_logits(rank, ckpt, tokens):
    from tests.unit.megatron_env import in_layout

    return in_layout(_tp_logits_in_world, 2, ckpt, tokens)


def _tp_logits_in_world(ckpt, tokens):
    import dataclasses

    from megatron.core import parallel_state

    from nemo_reason.bridge.megatron_side import run_config
    from nemo_reason.checkpoint.meta import read_meta
    from nemo_reason.parallel import ParallelDims
    from nemo_reason.stages import StepContext
    from nemo_reason.training.state import build_train_state

    cfg = run_config(dataclasses.replace(read_meta(ckpt).model, backend="auto"))
    cfg = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, tp=2))
    ctx = StepContext(ParallelDims.from_config(cfg.parallel, 2), Path("."), Path("."), "tp2")
    model = build_train_state(cfg, ctx, 300, init_checkpoint=Path(ckpt), build_optimizer_state=False).chunks[0]
    model.eval()
    assert parallel_state.get_tensor_model_parallel_world_size() == 2
    with torch.no_grad():
        pos = torch.arange(tokens.shape[1]).expand_as(tokens)
        return model(tokens, pos, None, runtime_gather_output=True).float()


@pytest.mark.slow
def test_imported_checkpoint_loads_at_tp2_and_computes_the_same(converted):
    """The one-process import loaded at TP=2 (in_proj split per z/x/B/C/dt section, one Mamba group
    per rank; dist_checkpointing reshards) gives the one-process logits."""
    from nemo_reason.bridge.megatron_side import build_our_model
    from nemo_reason.checkpoint.meta import read_meta
    from tests.spawn import spawn

    c = converted
    tokens = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(5))
    model = build_our_model(read_meta(c["ckpt"]).model, 300, checkpoint=c["ckpt"])
    with torch.no_grad():
        ref = model(tokens, torch.arange(24).expand_as(tokens), None).float()
    for r in spawn(_tp_logits, 2, (str(c["ckpt"]), tokens)):
        torch.testing.assert_close(r.value, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("recipe", ["nemotron_h_8b", "nemotron_h_56b"])
def test_published_recipes_convert_to_their_hf_config_and_back(recipe):
    """Config only, at full size: Nemotron-H 8B / 56B are recognised, transformers' NemotronHConfig
    takes their config.json (52 / 118 layers from the pattern), and reading it back gives the same
    architecture."""
    import yaml

    from nemo_reason.bridge import bridge_for_model
    from nemo_reason.bridge.base import HFConfig
    from nemo_reason.checkpoint.meta import architecture, model_config_from_dict

    m = model_config_from_dict(yaml.safe_load((Path(__file__).parents[2] / "recipes/model" / f"{recipe}.yaml")
                                              .read_text()))
    bridge = bridge_for_model(m)
    assert bridge.model_type == "nemotron_h"
    doc = bridge.to_hf_config(m, m.vocab_size)
    hf_cfg = transformers.NemotronHConfig(**{k: v for k, v in doc.items() if k != "model_type"})
    assert hf_cfg.num_hidden_layers == m.num_layers and hf_cfg.hybrid_override_pattern == m.hybrid_pattern
    back = bridge.to_model_config(HFConfig(hf_cfg.to_dict()))
    back.make_vocab_size_divisible_by = m.make_vocab_size_divisible_by
    assert architecture(back) == architecture(m)
    assert (back.mamba_chunk_size, back.vocab_size, back.max_position_embeddings) == \
        (m.mamba_chunk_size, m.vocab_size, m.max_position_embeddings)
