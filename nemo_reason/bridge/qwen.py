"""Qwen2 (q/k/v biases) and Qwen3 (q/k RMSNorm per head), dense; Llama's layout otherwise.

- ``qwen2`` (``Qwen2ForCausalLM``): biases on ``q_proj``/``k_proj``/``v_proj`` only, which is
  Megatron's ``add_qkv_bias`` (fused into ``linear_qkv.bias``, per query group like the weight).
- ``qwen3`` (``Qwen3ForCausalLM``): no biases (``attention_bias=false``), ``q_norm``/``k_norm``
  RMSNorms of one head's width applied per head before RoPE, which is Megatron's ``qk_layernorm``
  (``self_attention.q_layernorm.weight``/``k_layernorm.weight``).

Both usually tie the embedding to the output layer in small sizes (``tie_word_embeddings``).
Not represented: sliding-window attention (``use_sliding_window``, ``layer_types``), RoPE scaling,
Qwen3's ``attention_bias=true`` (biases on q/k/v and o but not the MLP: no Megatron flag for that).
"""

from __future__ import annotations

from typing import Any, Dict, List

from nemo_reason.bridge import register_bridge
from nemo_reason.bridge.base import Bridge, HFConfig
from nemo_reason.bridge.llama import (attention_templates, dense_hf_config, dense_model_config, is_llama_like,
                                      mlp_templates, outer_mappings)
from nemo_reason.bridge.mapping import Mapping, for_layers
from nemo_reason.config.model import ModelConfig


class _QwenDense(Bridge):
    def mappings(self, m: ModelConfig) -> List[Mapping]:
        return outer_mappings(m) + for_layers(attention_templates(m) + mlp_templates(m), range(m.num_layers))


@register_bridge
class Qwen2Bridge(_QwenDense):
    """Qwen2 / Qwen2.5 dense decoder (GQA, SwiGLU, RMSNorm, q/k/v biases)."""

    model_type = "qwen2"
    architectures = ("Qwen2ForCausalLM",)

    def to_model_config(self, hf: HFConfig) -> ModelConfig:
        hf.expect("hidden_act", ("silu",), "silu")
        return dense_model_config(hf, activation="swiglu", normalization="RMSNorm", eps_field="rms_norm_eps",
                                  add_qkv_bias=True)

    def to_hf_config(self, m: ModelConfig, vocab_size: int) -> Dict[str, Any]:
        return dense_hf_config(m, vocab_size, model_type="qwen2", architecture="Qwen2ForCausalLM",
                               activation="silu", eps_field="rms_norm_eps", use_sliding_window=False)

    def matches(self, m: ModelConfig) -> bool:
        return is_llama_like(m) and m.add_qkv_bias and not m.add_bias_linear and not m.qk_layernorm


@register_bridge
class Qwen3Bridge(_QwenDense):
    """Qwen3 dense decoder (GQA, SwiGLU, RMSNorm, q/k norms)."""

    model_type = "qwen3"
    architectures = ("Qwen3ForCausalLM",)

    def to_model_config(self, hf: HFConfig) -> ModelConfig:
        hf.expect("hidden_act", ("silu",), "silu")
        hf.expect("attention_bias", (False,), False)
        return dense_model_config(hf, activation="swiglu", normalization="RMSNorm", eps_field="rms_norm_eps",
                                  qk_layernorm=True)

    def to_hf_config(self, m: ModelConfig, vocab_size: int) -> Dict[str, Any]:
        return dense_hf_config(m, vocab_size, model_type="qwen3", architecture="Qwen3ForCausalLM",
                               activation="silu", eps_field="rms_norm_eps", attention_bias=False,
                               use_sliding_window=False)

    def matches(self, m: ModelConfig) -> bool:
        return is_llama_like(m) and m.qk_layernorm and not m.add_qkv_bias and not m.add_bias_linear
