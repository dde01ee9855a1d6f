"""Mixture-of-Experts bridges (Mixtral, Qwen2-MoE, Qwen3-MoE) against transformers' real classes.

Tiny random models (hidden 64, 4 experts top-2, vocab 300) are imported with the parity gate,
exported again with it, and the safetensors compared bit for bit; our own model goes out to HF and
back bit for bit; greedy rollout equals transformers' greedy ``generate``; unrepresentable config
values and missing / unexpected tensors stop with their names. The imports run once per module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.unit.bridge_tensors import hf_tensors, our_tensors
from tests.unit.hf_tiny import TINY, assert_greedy_equals_transformers, hf_folder, tiny_tokenizer
from tests.unit.megatron_env import megatron_single  # noqa: F401

transformers = pytest.importorskip("transformers")

MOE = dict(num_experts_per_tok=2, router_aux_loss_coef=0.01)


def _configs():
    t = transformers
    return {
        # Routing: softmax, top-2, renormalised (Megatron: top-k on logits, softmax over the k).
        "mixtral": t.MixtralConfig(**TINY, **MOE, num_local_experts=4),
        # Un-normalised top-k softmax weights (pre-softmax routing), a gated shared expert, q/k/v biases.
        "qwen2_moe": t.Qwen2MoeConfig(**TINY, **MOE, num_experts=4, moe_intermediate_size=48,
                                      shared_expert_intermediate_size=80, norm_topk_prob=False),
        # q/k norms, renormalised top-k, a dense middle layer (MoE at layers 0 and 2: moe_layer_freq=2).
        "qwen3_moe": t.Qwen3MoeConfig(**{**TINY, "num_hidden_layers": 3}, **MOE, num_experts=4, head_dim=16,
                                      moe_intermediate_size=48, norm_topk_prob=True, mlp_only_layers=[1]),
    }


ARCHS = ("mixtral", "qwen2_moe", "qwen3_moe")


@pytest.fixture(scope="module")
def converted(tmp_path_factory, megatron_single):  # noqa: F811
    """Per architecture: the HF folder, our imported checkpoint (parity-gated), the exported HF folder
    (written without the gate here: the bit-identical tensors imply it; the slow test runs it)."""
    from nemo_reason.bridge.convert import export_hf, import_hf

    root = tmp_path_factory.mktemp("bridge_moe")
    tok = tiny_tokenizer(root / "tokenizer")
    out = {}
    for arch, cfg in _configs().items():
        hf = hf_folder(root / arch, cfg, tok)
        imp = import_hf(hf, root / f"{arch}_ckpt", log=None)
        export_hf(root / f"{arch}_ckpt", root / f"{arch}_out", verify=False, log=None)
        out[arch] = dict(hf=hf, ckpt=root / f"{arch}_ckpt", out=root / f"{arch}_out", imp=imp, root=root)
    return out


def _passed(report):
    assert report["passed"] and report["first_divergence"] is None
    assert report["max_abs_diff"] <= 1e-4 * report["scale"]
    assert report["scale"] > 0.1  # the logits are not trivially zero


@pytest.mark.parametrize("arch", ARCHS)
def test_import_passes_the_parity_gate(converted, arch):
    c = converted[arch]
    _passed(c["imp"]["parity"])
    from nemo_reason.checkpoint.meta import read_meta

    m = read_meta(c["ckpt"]).model
    assert (m.type, m.num_moe_experts, m.moe_router_topk) == ("moe", 4, 2)
    want = {"mixtral": (False, 1, None, False), "qwen2_moe": (True, 1, 80, True),
            "qwen3_moe": (False, 2, None, False)}[arch]
    assert (m.moe_router_pre_softmax, m.moe_layer_freq, m.moe_shared_expert_intermediate_size,
            m.moe_shared_expert_gate) == want
    assert m.qk_layernorm == (arch == "qwen3_moe") and m.add_qkv_bias == (arch == "qwen2_moe")


@pytest.mark.parametrize("arch", ARCHS)
def test_hf_ours_hf_is_bit_identical(converted, arch):
    a, b = hf_tensors(converted[arch]["hf"]), hf_tensors(converted[arch]["out"])
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])] == []
    doc = json.loads((converted[arch]["out"] / "config.json").read_text())
    back = transformers.AutoConfig.from_pretrained(str(converted[arch]["out"]))
    assert doc["model_type"] == arch and type(back).__name__ == type(_configs()[arch]).__name__


def test_ours_hf_ours_is_bit_identical(converted):
    """Our own model (seeded, never seen by HF; exported without a recorded HF architecture, so the
    bridge is found from the ModelConfig) -> HF -> ours: every tensor equal."""
    import dataclasses

    from nemo_reason.bridge import bridge_for_model
    from nemo_reason.bridge.convert import _hf_tokenizer_record, export_hf, import_hf
    from nemo_reason.bridge.megatron_side import build_our_model, save_checkpoint

    c = converted["qwen2_moe"]
    root = c["root"]
    from nemo_reason.checkpoint.meta import read_meta

    m = dataclasses.replace(read_meta(c["ckpt"]).model, moe_aux_loss_coeff=0.0)
    assert type(bridge_for_model(m)).__name__ == "Qwen2MoeBridge"
    torch.manual_seed(7)
    model = build_our_model(m, 300)
    saved = save_checkpoint(root / "own", model, m, _hf_tokenizer_record(c["hf"]))
    before = our_tensors(saved)
    # No gates here (the import test above runs them): the check is the tensors themselves.
    export_hf(saved, root / "own_hf", verify=False, log=None)
    import_hf(root / "own_hf", root / "own_back", verify=False, log=None)
    after = our_tensors(root / "own_back")
    assert sorted(before) == sorted(after)
    assert [k for k in before if not torch.equal(before[k], after[k])] == []


def test_the_gate_catches_a_wrong_routing_rule(converted):
    """Qwen2-MoE's un-normalised top-k weights read as renormalised (Mixtral's rule): the gate fails
    at the first MoE layer, by far more than its bound."""
    from nemo_reason.bridge import ParityError, bridge_for_hf, parity
    from nemo_reason.bridge.megatron_side import build_our_model
    from nemo_reason.checkpoint.meta import read_meta

    c = converted["qwen2_moe"]
    bridge = bridge_for_hf({"model_type": "qwen2_moe"})
    model = build_our_model(read_meta(c["ckpt"]).model, 300, checkpoint=c["ckpt"])
    model.config.moe_router_pre_softmax = False  # the routers read it at every forward
    tokens = parity.probe_tokens(300)
    ours = parity.trace_ours(model, bridge, tokens)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(c["hf"]), dtype=torch.float32)
    report = parity.compare(parity.trace_hf(hf, bridge, tokens), ours)
    assert not report.passed and report.max_abs_diff > 100 * report.tol
    assert report.first_divergence.startswith("layer 0")
    with pytest.raises(ParityError, match="first divergence: layer 0"):
        parity.check(report, "test")


@pytest.mark.parametrize("arch", ["mixtral", pytest.param("qwen2_moe", marks=pytest.mark.slow),
                                  pytest.param("qwen3_moe", marks=pytest.mark.slow)])
def test_greedy_rollout_equals_transformers_generate(converted, arch):
    c = converted[arch]
    assert_greedy_equals_transformers(c["ckpt"], c["hf"], (5, 9, 3), max_new_tokens=8)


def _edited(converted, arch, dst: Path, *, config=None, drop=(), add=()):
    """A copy of ``arch``'s HF folder with config.json fields replaced and index entries dropped/added."""
    shutil.copytree(converted[arch]["hf"], dst)
    if config:
        doc = json.loads((dst / "config.json").read_text())
        doc.update(config)
        (dst / "config.json").write_text(json.dumps(doc))
    index = dst / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    for k in drop:
        del doc["weight_map"][k]
    for k in add:
        doc["weight_map"][k] = next(iter(doc["weight_map"].values()))
    index.write_text(json.dumps(doc))
    return dst


BAD = [
    ("mixtral", {"sliding_window": 4096}, "sliding_window=4096"),
    ("mixtral", {"router_jitter_noise": 0.1}, "router_jitter_noise=0.1"),
    ("mixtral", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}}, "rope_type='yarn'"),
    ("mixtral", {"hidden_act": "gelu"}, "hidden_act='gelu'"),
    # MoE at layers 1, 2 (not 0, N, 2N, ...): Megatron's integer moe_layer_freq cannot say that.
    ("qwen3_moe", {"mlp_only_layers": [0]}, "mlp_only_layers=[0]"),
    ("qwen3_moe", {"mlp_only_layers": [], "decoder_sparse_step": 2}, "decoder_sparse_step=2"),
    ("qwen3_moe", {"attention_bias": True}, "attention_bias=True"),
    ("qwen2_moe", {"use_sliding_window": True, "sliding_window": 64}, "use_sliding_window=True"),
    ("qwen2_moe", {"shared_expert_intermediate_size": 0}, "shared_expert_intermediate_size=0"),
    ("qwen2_moe", {"num_experts_per_tok": 5}, "num_experts_per_tok=5"),
]


@pytest.mark.parametrize("arch,edit,said", BAD, ids=[f"{a}-{next(iter(e))}" for a, e, _ in BAD])
def test_unrepresentable_config_stops_with_field_and_value(converted, tmp_path, arch, edit, said):
    from nemo_reason.bridge import BridgeError
    from nemo_reason.bridge.convert import import_hf

    folder = _edited(converted, arch, tmp_path / "hf", config=edit)
    with pytest.raises(BridgeError) as err:
        import_hf(folder, folder.parent / f"{folder.name}_ckpt", log=None)
    assert said in str(err.value)
    assert not (folder.parent / f"{folder.name}_ckpt").exists()


def test_missing_and_unexpected_expert_tensors_are_named(converted, tmp_path):
    from nemo_reason.bridge import BridgeError
    from nemo_reason.bridge.convert import import_hf

    gone = "model.layers.1.block_sparse_moe.experts.3.w2.weight"
    extra = "model.layers.0.block_sparse_moe.experts.4.w1.weight"
    folder = _edited(converted, "mixtral", tmp_path / "hf", drop=[gone], add=[extra])
    with pytest.raises(BridgeError) as err:
        import_hf(folder, tmp_path / "ckpt", log=None)
    assert gone in str(err.value) and extra in str(err.value)


def test_export_refuses_what_the_architecture_cannot_hold():
    import dataclasses

    from nemo_reason.bridge import BridgeError, bridge_for_model
    from nemo_reason.config.store import compose

    m = compose("tiny_moe", []).model  # a shared expert without gate: no HF MoE class has that
    with pytest.raises(BridgeError, match="no Hugging Face architecture"):
        bridge_for_model(m)
    with pytest.raises(BridgeError, match="moe_shared_expert_gate=False"):
        bridge_for_model(m, "qwen2_moe").check_export(m)
    with pytest.raises(BridgeError, match="moe_shared_expert_intermediate_size=64"):
        bridge_for_model(m, "mixtral").check_export(m)
    sig = dataclasses.replace(m, moe_shared_expert_intermediate_size=None, moe_router_score_function="sigmoid")
    with pytest.raises(BridgeError, match="moe_router_score_function='sigmoid'"):
        bridge_for_model(sig, "mixtral").check_export(sig)
    dense = dataclasses.replace(m, moe_shared_expert_intermediate_size=None, moe_layer_freq=2)
    with pytest.raises(BridgeError, match="moe_layer_freq=2"):
        bridge_for_model(dense, "mixtral").check_export(dense)
    assert type(bridge_for_model(dataclasses.replace(m, moe_shared_expert_gate=True, add_qkv_bias=True))).__name__ \
        == "Qwen2MoeBridge"


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_export_passes_the_parity_gate(converted, arch):
    from nemo_reason.bridge.convert import export_hf

    c = converted[arch]
    _passed(export_hf(c["ckpt"], c["root"] / f"{arch}_gated", log=None)["parity"])


def _ep_logits(rank, ckpt, tokens):
    """One rank of an EP=2 world: the imported checkpoint loaded (resharded) into the model, logits."""
    import dataclasses

    from nemo_reason.backend import dist as bdist
    from nemo_reason.backend import prepare
    from nemo_reason.bridge.megatron_side import run_config
    from nemo_reason.checkpoint.meta import read_meta
    from nemo_reason.parallel import ParallelDims
    from nemo_reason.stages import StepContext
    from nemo_reason.training.state import build_train_state

    torch.set_num_threads(1)
    bdist.init_process_group()
    prepare("local")
    try:
        cfg = run_config(dataclasses.replace(read_meta(ckpt).model, backend="auto"))
        cfg = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, ep=2))
        dims = ParallelDims.from_config(cfg.parallel, 2)
        dims.init()
        bdist.seed_everything(1234)
        ctx = StepContext(dims, Path("."), Path("."), "ep2")
        model = build_train_state(cfg, ctx, 300, init_checkpoint=Path(ckpt), build_optimizer_state=False).chunks[0]
        model.eval()
        with torch.no_grad():
            pos = torch.arange(tokens.shape[1]).expand_as(tokens)
            return model(tokens, pos, None).float()
    finally:
        ParallelDims.destroy()
        bdist.destroy_process_group()


@pytest.mark.slow
def test_imported_moe_checkpoint_loads_at_ep2_and_computes_the_same(converted):
    """The checkpoint imported at one process, loaded at expert parallelism 2 (each rank holds 2 of
    the 4 experts; dist_checkpointing reshards), gives the one-process logits on every rank."""
    from nemo_reason.bridge.megatron_side import build_our_model
    from nemo_reason.checkpoint.meta import read_meta
    from tests.spawn import spawn

    c = converted["qwen2_moe"]
    tokens = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(5))
    model = build_our_model(read_meta(c["ckpt"]).model, 300, checkpoint=c["ckpt"])
    with torch.no_grad():
        ref = model(tokens, torch.arange(16).expand_as(tokens), None).float()
    results = spawn(_ep_logits, 2, (str(c["ckpt"]), tokens))
    for r in results:
        torch.testing.assert_close(r.value, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("recipe,arch", [("mixtral_8x22b", "mixtral"), ("qwen2_57b_a14b", "qwen2_moe")])
def test_published_recipes_convert_to_their_hf_config_and_back(recipe, arch):
    """Config only, at full size: the recipe's model is recognised as ``arch``, its config.json is
    accepted by transformers' class, and reading it back gives the same architecture and routing."""
    import yaml

    from nemo_reason.bridge import bridge_for_model
    from nemo_reason.bridge.base import HFConfig
    from nemo_reason.checkpoint.meta import architecture, model_config_from_dict

    m = model_config_from_dict(yaml.safe_load((Path(__file__).parents[2] / "recipes/model" / f"{recipe}.yaml")
                                              .read_text()))
    bridge = bridge_for_model(m)
    assert bridge.model_type == arch
    doc = bridge.to_hf_config(m, m.vocab_size)
    hf_cfg = transformers.AutoConfig.for_model(doc.pop("model_type"), **doc)
    back = bridge.to_model_config(HFConfig({**hf_cfg.to_dict(), "model_type": arch}))
    back.make_vocab_size_divisible_by = m.make_vocab_size_divisible_by
    assert architecture(back) == architecture(m)
    fields = ("moe_router_topk", "moe_router_pre_softmax", "moe_router_score_function", "rotary_base",
              "layernorm_epsilon", "vocab_size", "max_position_embeddings")
    assert {f: getattr(back, f) for f in fields} == {f: getattr(m, f) for f in fields}
