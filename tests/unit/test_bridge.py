"""Hugging Face import/export of the dense architectures with real transformers classes.

One module-scoped conversion per architecture (Llama, Qwen2 with tied embeddings, Qwen3, Nemotron-4):
a seeded random tiny model saved by ``save_pretrained`` (sharded safetensors), imported with the
parity gate, exported with the gate. The tests check the gate's numbers, HF -> ours -> HF
bit-identical tensors and config, ours -> HF -> ours bit-identical tensors, our greedy rollout
against ``transformers``' greedy ``generate``, and that a wrong conversion fails the gate, names
the first layer that diverges, and leaves no output.
"""

import json

import pytest
import torch

from tests.unit.bridge_tensors import hf_tensors
from tests.unit.hf_tiny import TINY, hf_folder, tiny_tokenizer
from tests.unit.megatron_env import megatron_single  # noqa: F401

transformers = pytest.importorskip("transformers")

CONFIGS = {
    # Llama 3 style: GQA, RoPE base 500000, untied head.
    "llama": lambda: transformers.LlamaConfig(**TINY, rope_theta=500000.0, rms_norm_eps=1e-6),
    # Qwen2: q/k/v biases, tied embeddings.
    "qwen2": lambda: transformers.Qwen2Config(**TINY, tie_word_embeddings=True, rope_theta=1000000.0),
    # Qwen3: q/k norms, head_dim set apart from hidden / heads.
    "qwen3": lambda: transformers.Qwen3Config(**TINY, head_dim=32),
    # Nemotron-4: squared ReLU, LayerNorm1P, partial RoPE.
    "nemotron": lambda: transformers.NemotronConfig(**TINY, partial_rotary_factor=0.5),
}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def converted(request, tmp_path_factory, tok_dir, megatron_single):  # noqa: F811
    from nemo_reason.bridge.convert import export_hf, import_hf

    arch = request.param
    root = tmp_path_factory.mktemp(f"bridge_{arch}")
    hf = hf_folder(root / "hf", CONFIGS[arch](), tok_dir)
    imp = import_hf(hf, root / "ckpt", log=None)
    exp = export_hf(root / "ckpt", root / "hf_out", log=None)
    return {"arch": arch, "root": root, "hf": hf, "ckpt": root / "ckpt", "out": root / "hf_out", "import": imp,
            "export": exp}


def test_gate_passes_both_ways_with_the_stated_bound(converted):
    for what in ("import", "export"):
        p = converted[what]["parity"]
        assert p["passed"] and p["max_abs_diff"] <= 1e-4 * p["scale"], (converted["arch"], what, p)
        assert p["scale"] > 0.05  # logits that carry signal
        assert {"embedding", "layer 0", "layer 1", "final norm"} <= set(p["points"])


def test_hf_to_ours_to_hf_is_bit_identical(converted):
    a, b = hf_tensors(converted["hf"]), hf_tensors(converted["out"])
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    src = json.loads((converted["hf"] / "config.json").read_text())
    out = json.loads((converted["out"] / "config.json").read_text())
    for key in ("model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "vocab_size", "tie_word_embeddings"):
        assert out[key] == src[key], key
    assert (converted["out"] / "model.safetensors.index.json").is_file()
    assert (converted["out"] / "tokenizer.json").read_bytes() == (converted["hf"] / "tokenizer.json").read_bytes()
    # transformers reads the folder back as the same class with the same config values.
    cfg = transformers.AutoConfig.from_pretrained(str(converted["out"]))
    ref = transformers.AutoConfig.from_pretrained(str(converted["hf"]))
    assert type(cfg) is type(ref)
    assert cfg.rope_parameters == ref.rope_parameters
    assert transformers.AutoTokenizer.from_pretrained(str(converted["out"])).eos_token == \
        transformers.AutoTokenizer.from_pretrained(str(converted["hf"])).eos_token


def test_imported_checkpoint_describes_itself(converted):
    from nemo_reason.checkpoint.meta import load_tokenizer, read_meta

    info = read_meta(converted["ckpt"])
    assert info.tokenizer["name"] == "hf" and info.tokenizer["vocab_size"] == 300
    assert info.extra["hf"]["model_type"] == converted["arch"]
    m = info.model
    assert (m.num_layers, m.hidden_size, m.num_query_groups) == (2, 64, 2)
    src = json.loads((converted["hf"] / "config.json").read_text())
    assert m.rotary_base == int(src.get("rope_parameters", {}).get("rope_theta", src.get("rope_theta")))
    assert load_tokenizer(converted["ckpt"]).vocab_size == 300


def test_ours_to_hf_to_ours_is_bit_identical(converted, tmp_path):
    """A model initialised here (seeded, norms perturbed), saved as our checkpoint, exported and
    imported again: every tensor identical."""
    import dataclasses

    from nemo_reason.bridge.convert import export_hf, import_hf
    from nemo_reason.bridge.megatron_side import build_our_model, canonical_tensors, save_checkpoint
    from nemo_reason.checkpoint.meta import read_meta

    info = read_meta(converted["ckpt"])
    m = dataclasses.replace(info.model, init_method_std=0.05)
    torch.manual_seed(3)
    model = build_our_model(m, 300)
    with torch.no_grad():
        for name, t in canonical_tensors(model).items():
            if "norm" in name:
                t.add_(torch.randn_like(t) * 0.1)
    ours = save_checkpoint(tmp_path / "root", model, m, info.tokenizer)  # no "hf" record: inferred architecture
    before = {k: v.clone() for k, v in canonical_tensors(model).items()}
    # The gate is the fixture's and the failure test's business; here only the tensors count.
    export_hf(ours, tmp_path / "hf", log=None, verify=False)
    import_hf(tmp_path / "hf", tmp_path / "back", log=None, verify=False)
    again = canonical_tensors(build_our_model(read_meta(tmp_path / "back").model, 300, tmp_path / "back"))
    assert sorted(again) == sorted(before)
    for name in before:
        assert torch.equal(again[name], before[name]), name


def test_greedy_rollout_equals_transformers_generate(converted):
    if converted["arch"] not in ("llama", "nemotron"):
        pytest.skip("one GQA/SwiGLU and one partial-RoPE/LayerNorm1P architecture cover the decode path")
    from nemo_reason.bridge.megatron_side import build_our_model
    from nemo_reason.checkpoint.meta import load_tokenizer, read_meta
    from nemo_reason.rollout.sampler import SamplingParams, generate

    tok = load_tokenizer(converted["ckpt"])
    prompts = [tok.tokenize("3 plus 4 is"), tok.tokenize("The answer is 12; x =")]
    model = build_our_model(read_meta(converted["ckpt"]).model, tok.vocab_size, converted["ckpt"])
    ours = generate(model, tok, prompts, SamplingParams(greedy=True, max_new_tokens=12))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(converted["hf"]), dtype=torch.float32).eval()
    for sample in ours:
        p = prompts[sample.prompt_index]
        out = hf.generate(torch.tensor([p]), do_sample=False, max_new_tokens=12, eos_token_id=tok.eod,
                          pad_token_id=tok.pad)
        theirs = out[0, len(p):].tolist()
        assert sample.tokens == theirs[:len(sample.tokens)] and len(sample.tokens) in (len(theirs), 12)


def test_a_wrong_mapping_fails_the_gate_names_the_layer_and_leaves_nothing(converted, monkeypatch):
    if converted["arch"] != "llama":
        pytest.skip("one architecture is enough for the gate's failure path")
    from nemo_reason.bridge import ParityError
    from nemo_reason.bridge.convert import import_hf
    from nemo_reason.bridge.llama import LlamaBridge
    from nemo_reason.bridge.mapping import QKV

    good = LlamaBridge.mappings

    def swapped_kv_in_layer_1(self, m):
        out = []
        for mp in good(self, m):
            if isinstance(mp, QKV) and mp.ours == "decoder.layers.1.self_attention.linear_qkv.weight":
                q, k, v = mp.hf
                mp = QKV(mp.ours, q, v, k, heads=mp.heads, groups=mp.groups, head_dim=mp.head_dim)
            out.append(mp)
        return out

    monkeypatch.setattr(LlamaBridge, "mappings", swapped_kv_in_layer_1)
    dest = converted["root"] / "broken"
    with pytest.raises(ParityError, match=r"first divergence: layer 1: max \|diff\|") as err:
        import_hf(converted["hf"], dest, log=None)
    assert "logits max |diff|" in str(err.value)
    assert not dest.exists() and not list(dest.parent.glob(".broken.tmp-*"))


def test_bf16_export_rounds_once_and_passes_the_same_bound(converted, tmp_path):
    if converted["arch"] != "llama":
        pytest.skip("the dtype path is shared by every architecture")
    from nemo_reason.bridge.convert import export_hf

    summary = export_hf(converted["ckpt"], tmp_path / "bf16", dtype="bf16", log=None)
    p = summary["parity"]
    assert summary["dtype"] == "bfloat16" and p["passed"] and p["max_abs_diff"] <= 1e-4 * p["scale"]
    a, b = hf_tensors(converted["hf"]), hf_tensors(tmp_path / "bf16")
    assert all(b[k].dtype == torch.bfloat16 and torch.equal(b[k], a[k].to(torch.bfloat16)) for k in a)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
