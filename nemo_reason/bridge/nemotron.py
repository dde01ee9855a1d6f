"""Nemotron-4 (``nemotron``): squared-ReLU MLP, LayerNorm1P, partial RoPE; Llama's layout otherwise.

HF ``NemotronForCausalLM`` <-> Megatron ``GPTModel`` with ``activation=squared_relu``,
``normalization=LayerNorm``, ``layernorm_zero_centered_gamma=true`` (HF's ``NemotronLayerNorm1P``
computes with ``weight + 1``; Megatron/TE store the same zero-centred weight, so the tensors map
as they are, biases included) and ``rotary_percent = partial_rotary_factor`` (RoPE on the first
part of each head, in both). The MLP is not gated: ``mlp.up_proj`` <-> ``linear_fc1``,
``mlp.down_proj`` <-> ``linear_fc2``.

Not represented: ``attention_bias`` without ``mlp_bias`` (or the reverse), RoPE scaling,
activations other than ``relu2``; exporting a model whose LayerNorm is not zero-centred (the
tiny recipes' default) stops with that field rather than rewriting the weights.
"""

from __future__ import annotations

from typing import Any, Dict, List

from nemo_reason.bridge import BridgeError, register_bridge
from nemo_reason.bridge.base import Bridge, HFConfig
from nemo_reason.bridge.llama import (attention_templates, dense_hf_config, dense_model_config, mlp_templates,
                                      outer_mappings)
from nemo_reason.bridge.mapping import Mapping, for_layers
from nemo_reason.config.model import ModelConfig


@register_bridge
class NemotronBridge(Bridge):
    """Nemotron-4 / Minitron dense decoder (squared ReLU, LayerNorm1P, partial RoPE)."""

    model_type = "nemotron"
    architectures = ("NemotronForCausalLM",)

    def to_model_config(self, hf: HFConfig) -> ModelConfig:
        hf.expect("hidden_act", ("relu2",), "relu2")
        attn_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
        if attn_bias != mlp_bias:
            raise hf.fail("attention_bias", attn_bias, f"with mlp_bias={mlp_bias}: Megatron's add_bias_linear "
                          "gives every linear a bias or none")
        if "partial_rotary_factor" not in (hf.doc.get("rope_parameters") or {}) and \
                "partial_rotary_factor" not in hf.doc:
            hf.doc["partial_rotary_factor"] = 0.5  # NemotronConfig's default
        return dense_model_config(hf, activation="squared_relu", normalization="LayerNorm", eps_field="norm_eps",
                                  add_bias_linear=attn_bias, layernorm_zero_centered_gamma=True)

    def to_hf_config(self, m: ModelConfig, vocab_size: int) -> Dict[str, Any]:
        cfg = dense_hf_config(m, vocab_size, model_type="nemotron", architecture="NemotronForCausalLM",
                              activation="relu2", eps_field="norm_eps", attention_bias=m.add_bias_linear,
                              mlp_bias=m.add_bias_linear)
        # NemotronConfig fills a missing partial_rotary_factor with 0.5: always write it.
        cfg["partial_rotary_factor"] = float(m.rotary_percent)
        cfg["rope_parameters"]["partial_rotary_factor"] = float(m.rotary_percent)
        return cfg

    def matches(self, m: ModelConfig) -> bool:
        return (m.type == "gpt" and m.activation == "squared_relu" and m.normalization == "LayerNorm"
                and m.position_embedding_type == "rope" and not m.qk_layernorm and not m.add_qkv_bias
                and m.layernorm_zero_centered_gamma)

    def check_export(self, m: ModelConfig) -> None:
        if (m.type == "gpt" and m.activation == "squared_relu" and m.normalization == "LayerNorm"
                and not m.layernorm_zero_centered_gamma):
            raise BridgeError("model.layernorm_zero_centered_gamma=false cannot be exported as nemotron: HF's "
                              "NemotronLayerNorm1P stores gamma - 1; train with "
                              "model.layernorm_zero_centered_gamma=true to export this architecture")
        super().check_export(m)

    def mappings(self, m: ModelConfig) -> List[Mapping]:
        return outer_mappings(m) + for_layers(attention_templates(m) + mlp_templates(m), range(m.num_layers))
