"""Bad input to the bridge stops before any model is built, naming the problem and the fix.

One tiny Llama folder (real ``transformers`` classes, sharded safetensors) is copied and broken
per case: an unsupported architecture, a missing and an extra tensor, a head that is not tied
although the config says so, and config fields we cannot represent (RoPE scaling, sliding
window, bias combinations, activation, a vocabulary smaller than the tokenizer).
"""

import json
import shutil
from pathlib import Path

import pytest

from tests.unit.hf_tiny import TINY, hf_folder, tiny_tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    tok = tiny_tokenizer(root / "tok")
    return hf_folder(root / "llama", transformers.LlamaConfig(**TINY), tok)


def _copy(src: Path, dest: Path, **config) -> Path:
    shutil.copytree(src, dest)
    doc = json.loads((dest / "config.json").read_text())
    for k, v in config.items():
        if v is None:
            doc.pop(k, None)
        else:
            doc[k] = v
    (dest / "config.json").write_text(json.dumps(doc))
    return dest


def _edit_tensors(folder: Path, drop=(), add=None, replace=None) -> None:
    """Rewrite the shards: drop names, add ``{name: tensor}`` to the first shard, replace values."""
    from safetensors.torch import load_file, save_file

    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    for i, shard in enumerate(shards):
        tensors = load_file(str(folder / shard))
        tensors = {k: (replace or {}).get(k, v) for k, v in tensors.items() if k not in drop}
        if i == 0 and add:
            tensors.update(add)
        save_file(tensors, str(folder / shard), metadata={"format": "pt"})
        index["weight_map"] = {k: v for k, v in index["weight_map"].items() if k not in drop}
        if i == 0 and add:
            index["weight_map"].update({k: shard for k in add})
    index_path.write_text(json.dumps(index))


def _import(folder: Path, tmp_path: Path):
    from nemo_reason.bridge.convert import import_hf

    return import_hf(folder, tmp_path / "out", log=None)


def _fails(folder: Path, tmp_path: Path, *needles: str) -> str:
    from nemo_reason.bridge import BridgeError

    with pytest.raises(BridgeError) as err:
        _import(folder, tmp_path)
    for n in needles:
        assert n in str(err.value), (n, str(err.value))
    assert not (tmp_path / "out").exists()
    return str(err.value)


def test_unsupported_architecture_names_the_supported_ones(llama_dir, tmp_path):
    bad = _copy(llama_dir, tmp_path / "gpt2", model_type="gpt2", architectures=["GPT2LMHeadModel"])
    said = _fails(bad, tmp_path, "model_type='gpt2'", "supported:", "llama (LlamaForCausalLM)",
                  "qwen2 (Qwen2ForCausalLM)", "qwen3", "nemotron (NemotronForCausalLM)")
    assert "not supported" in said


def test_missing_tensor_is_named(llama_dir, tmp_path):
    bad = _copy(llama_dir, tmp_path / "missing")
    _edit_tensors(bad, drop=("model.layers.1.mlp.down_proj.weight",))
    _fails(bad, tmp_path, "missing 1 tensor", "model.layers.1.mlp.down_proj.weight")


def test_extra_tensor_is_named(llama_dir, tmp_path):
    import torch

    bad = _copy(llama_dir, tmp_path / "extra")
    _edit_tensors(bad, add={"model.layers.0.self_attn.extra_proj.weight": torch.zeros(4, 4)})
    _fails(bad, tmp_path, "1 unexpected tensor", "model.layers.0.self_attn.extra_proj.weight")


def test_untied_head_under_tie_word_embeddings_is_refused(llama_dir, tmp_path):
    bad = _copy(llama_dir, tmp_path / "tied", tie_word_embeddings=True)
    _fails(bad, tmp_path, "tie_word_embeddings=true", "lm_head.weight differs")


def test_missing_head_says_to_tie(llama_dir, tmp_path):
    bad = _copy(llama_dir, tmp_path / "nohead")
    _edit_tensors(bad, drop=("lm_head.weight",))
    _fails(bad, tmp_path, "lm_head.weight", "set tie_word_embeddings=true")


@pytest.mark.parametrize("fields, needles", [
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
     ("rope_parameters.rope_type='llama3'", "only the default RoPE")),
    ({"rope_parameters": None, "rope_scaling": {"type": "linear", "factor": 2.0}}, ("rope_scaling.type='linear'",)),
    ({"attention_bias": True, "mlp_bias": False}, ("attention_bias=True", "mlp_bias=False")),
    ({"hidden_act": "gelu"}, ("hidden_act='gelu'", "'silu'")),
    ({"vocab_size": 200}, ("300 tokens", "vocab_size=200")),
    ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "use_sliding_window": True,
      "sliding_window": 64}, ("use_sliding_window=True", "sliding-window")),
    ({"pretraining_tp": 2}, ("pretraining_tp=2",)),
], ids=["rope-llama3", "rope-linear", "bias-combo", "activation", "vocab", "sliding-window", "pretraining-tp"])
def test_unrepresentable_config_field_stops_with_field_and_value(llama_dir, tmp_path, fields, needles):
    bad = _copy(llama_dir, tmp_path / "cfg", **fields)
    _fails(bad, tmp_path, *needles)


def test_existing_output_is_never_overwritten(llama_dir, tmp_path):
    from nemo_reason.bridge import BridgeError

    (tmp_path / "out").mkdir()
    with pytest.raises(BridgeError, match="exists"):
        _import(llama_dir, tmp_path)


def test_export_of_an_architecture_no_bridge_represents_names_the_field():
    from nemo_reason.bridge import BridgeError, bridge_for_model
    from nemo_reason.config.model import ModelConfig

    # The tiny recipes' Nemotron-4 style model with a plain LayerNorm (HF's LayerNorm1P stores gamma - 1).
    with pytest.raises(BridgeError, match="no Hugging Face architecture.*layernorm_zero_centered_gamma=False"):
        bridge_for_model(ModelConfig())
    with pytest.raises(BridgeError, match="model.layernorm_zero_centered_gamma=false cannot be exported as nemotron"):
        bridge_for_model(ModelConfig(), "nemotron").check_export(ModelConfig())
    with pytest.raises(BridgeError, match="--model-type 'gpt2' is not supported; supported: llama"):
        bridge_for_model(ModelConfig(), "gpt2")
