"""Llama (dense, grouped-query attention, SwiGLU, RMSNorm) and the dense building blocks other bridges reuse.

HF ``LlamaForCausalLM`` <-> Megatron ``GPTModel`` with ``activation=swiglu``,
``normalization=RMSNorm``. Per layer (``{layer}``), our canonical name <-> the HF name::

    decoder.layers.{layer}.self_attention.linear_qkv.layer_norm_weight  <-> model.layers.{layer}.input_layernorm.weight
    decoder.layers.{layer}.self_attention.linear_qkv.weight             <-> self_attn.{q,k,v}_proj.weight (QKV)
    decoder.layers.{layer}.self_attention.linear_proj.weight            <-> self_attn.o_proj.weight
    decoder.layers.{layer}.mlp.linear_fc1.layer_norm_weight             <-> post_attention_layernorm.weight
    decoder.layers.{layer}.mlp.linear_fc1.weight                        <-> mlp.{gate,up}_proj.weight  (GatedMLP)
    decoder.layers.{layer}.mlp.linear_fc2.weight                        <-> mlp.down_proj.weight

plus ``embedding.word_embeddings.weight`` <-> ``model.embed_tokens.weight``,
``decoder.final_layernorm.weight`` <-> ``model.norm.weight`` and ``output_layer.weight`` <->
``lm_head.weight`` (absent when ``tie_word_embeddings``). Biases appear where the config asks for
them (``attention_bias`` with ``mlp_bias``: Megatron's ``add_bias_linear`` covers every linear, so
one without the other stops with the field and value).

The functions :func:`attention_templates`, :func:`mlp_templates`, :func:`outer_mappings` and
:func:`dense_model_config` / :func:`dense_hf_config` build the mappings and configs of any
Llama-like decoder; the Qwen, Nemotron-4 and MoE bridges compose them. Not represented:
RoPE scaling (llama3, linear, yarn, ...), ``pretraining_tp`` > 1, activations other than SiLU.
"""

from __future__ import annotations

from typing import Any, Dict, List

from nemo_reason.bridge import register_bridge
from nemo_reason.bridge.base import Bridge, HFConfig, rope_fields
from nemo_reason.bridge.mapping import QKV, Direct, GatedMLP, Mapping, for_layers
from nemo_reason.config.model import ModelConfig

OUR_LAYER = "decoder.layers.{layer}"
HF_LAYER = "model.layers.{layer}"


def head_dim(m: ModelConfig) -> int:
    return m.kv_channels or m.hidden_size // m.num_attention_heads


def norm_templates(ours: str, hf: str, m: ModelConfig) -> List[Mapping]:
    """A norm's weight (and bias, for LayerNorm). ``ours`` ends in ``layer_norm_`` or ``.`` (a
    fused TE name or a module), ``hf`` is the module name."""
    out = [Direct(f"{ours}weight", f"{hf}.weight")]
    if m.normalization == "LayerNorm":
        out.append(Direct(f"{ours}bias", f"{hf}.bias"))
    return out


def attention_templates(m: ModelConfig, hf_attn: str = HF_LAYER + ".self_attn",
                        hf_norm: str = HF_LAYER + ".input_layernorm",
                        q_norm: str = "q_norm", k_norm: str = "k_norm") -> List[Mapping]:
    """Pre-norm + fused QKV (+ biases, q/k norms) + output projection of layer ``{layer}``."""
    att = f"{OUR_LAYER}.self_attention"
    qkv = dict(heads=m.num_attention_heads, groups=m.num_query_groups or m.num_attention_heads, head_dim=head_dim(m))
    out = norm_templates(f"{att}.linear_qkv.layer_norm_", hf_norm, m)
    out.append(QKV(f"{att}.linear_qkv.weight", f"{hf_attn}.q_proj.weight", f"{hf_attn}.k_proj.weight",
                   f"{hf_attn}.v_proj.weight", **qkv))
    if m.add_bias_linear or m.add_qkv_bias:
        out.append(QKV(f"{att}.linear_qkv.bias", f"{hf_attn}.q_proj.bias", f"{hf_attn}.k_proj.bias",
                       f"{hf_attn}.v_proj.bias", **qkv))
    if m.qk_layernorm:
        out += norm_templates(f"{att}.q_layernorm.", f"{hf_attn}.{q_norm}", m)
        out += norm_templates(f"{att}.k_layernorm.", f"{hf_attn}.{k_norm}", m)
    out.append(Direct(f"{att}.linear_proj.weight", f"{hf_attn}.o_proj.weight"))
    if m.add_bias_linear:
        out.append(Direct(f"{att}.linear_proj.bias", f"{hf_attn}.o_proj.bias"))
    return out


def mlp_templates(m: ModelConfig, hf_mlp: str = HF_LAYER + ".mlp",
                  hf_norm: str = HF_LAYER + ".post_attention_layernorm") -> List[Mapping]:
    """Pre-MLP norm + dense MLP of layer ``{layer}``: gated (``gate_proj``/``up_proj``) for swiglu,
    else ``up_proj`` alone; ``down_proj``."""
    mlp = f"{OUR_LAYER}.mlp"
    out = norm_templates(f"{mlp}.linear_fc1.layer_norm_", hf_norm, m)
    if m.activation == "swiglu":
        out.append(GatedMLP(f"{mlp}.linear_fc1.weight", f"{hf_mlp}.gate_proj.weight", f"{hf_mlp}.up_proj.weight"))
        if m.add_bias_linear:
            out.append(GatedMLP(f"{mlp}.linear_fc1.bias", f"{hf_mlp}.gate_proj.bias", f"{hf_mlp}.up_proj.bias"))
    else:
        out.append(Direct(f"{mlp}.linear_fc1.weight", f"{hf_mlp}.up_proj.weight"))
        if m.add_bias_linear:
            out.append(Direct(f"{mlp}.linear_fc1.bias", f"{hf_mlp}.up_proj.bias"))
    out.append(Direct(f"{mlp}.linear_fc2.weight", f"{hf_mlp}.down_proj.weight"))
    if m.add_bias_linear:
        out.append(Direct(f"{mlp}.linear_fc2.bias", f"{hf_mlp}.down_proj.bias"))
    return out


def outer_mappings(m: ModelConfig, hf_embed: str = "model.embed_tokens", hf_norm: str = "model.norm",
                   hf_head: str = "lm_head") -> List[Mapping]:
    """Embedding, final norm and (untied) output layer."""
    out = [Direct("embedding.word_embeddings.weight", f"{hf_embed}.weight")]
    out += norm_templates("decoder.final_layernorm.", hf_norm, m)
    if m.untie_embeddings_and_output_weights:
        out.append(Direct("output_layer.weight", f"{hf_head}.weight"))
    return out


def dense_model_config(hf: HFConfig, *, activation: str, normalization: str, eps_field: str,
                       **fields) -> ModelConfig:
    """The ModelConfig fields every Llama-like decoder shares, read strictly from ``hf``."""
    theta, partial = hf.rope()
    if theta != int(theta):
        raise hf.fail("rope_theta", theta, "model.rotary_base is an integer")
    hf.no_sliding_window()
    hidden, heads = int(hf.require("hidden_size")), int(hf.require("num_attention_heads"))
    hd = hf.get("head_dim")
    if hf.get("pretraining_tp", 1) != 1:
        raise hf.fail("pretraining_tp", hf.get("pretraining_tp"), "use the model saved with pretraining_tp=1")
    return ModelConfig(**{
        "type": "gpt",
        "num_layers": int(hf.require("num_hidden_layers")),
        "hidden_size": hidden,
        "ffn_hidden_size": int(hf.require("intermediate_size")),
        "num_attention_heads": heads,
        "num_query_groups": int(hf.get("num_key_value_heads", heads)),
        "kv_channels": int(hd) if hd else None,
        "activation": activation,
        "normalization": normalization,
        "layernorm_epsilon": float(hf.get(eps_field, 1e-5)),
        "position_embedding_type": "rope",
        "rotary_base": int(theta),
        "rotary_percent": partial,
        "max_position_embeddings": int(hf.get("max_position_embeddings", 4096)),
        "untie_embeddings_and_output_weights": not bool(hf.get("tie_word_embeddings", False)),
        "vocab_size": int(hf.require("vocab_size")),
        "hidden_dropout": 0.0,
        "attention_dropout": float(hf.get("attention_dropout", 0.0)),
        "init_method_std": float(hf.get("initializer_range", 0.02)),
        **fields,
    })


def dense_hf_config(m: ModelConfig, vocab_size: int, *, model_type: str, architecture: str, activation: str,
                    eps_field: str, **fields) -> Dict[str, Any]:
    """The ``config.json`` fields every Llama-like decoder shares."""
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": vocab_size,
        "hidden_size": m.hidden_size,
        "intermediate_size": m.ffn_hidden_size,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_attention_heads,
        "num_key_value_heads": m.num_query_groups or m.num_attention_heads,
        "head_dim": head_dim(m),
        "hidden_act": activation,
        "max_position_embeddings": m.max_position_embeddings,
        eps_field: m.layernorm_epsilon,
        "tie_word_embeddings": not m.untie_embeddings_and_output_weights,
        "attention_dropout": m.attention_dropout,
        "initializer_range": m.init_method_std,
        **rope_fields(float(m.rotary_base), float(m.rotary_percent)),
        **fields,
    }


def is_llama_like(m: ModelConfig) -> bool:
    """A dense GPT with RoPE, SwiGLU and RMSNorm (what Llama, Qwen2 and Qwen3 share)."""
    return (m.type == "gpt" and m.activation == "swiglu" and m.normalization == "RMSNorm"
            and m.position_embedding_type == "rope" and not m.layernorm_zero_centered_gamma)


@register_bridge
class LlamaBridge(Bridge):
    """Llama 2/3 style dense decoder (GQA, SwiGLU, RMSNorm, RoPE)."""

    model_type = "llama"
    architectures = ("LlamaForCausalLM",)

    def to_model_config(self, hf: HFConfig) -> ModelConfig:
        hf.expect("hidden_act", ("silu",), "silu")
        attn_bias = bool(hf.get("attention_bias", False))
        mlp_bias = bool(hf.get("mlp_bias", False))
        if attn_bias != mlp_bias:
            raise hf.fail("attention_bias", attn_bias, f"with mlp_bias={mlp_bias}: Megatron's add_bias_linear "
                          "gives every linear a bias or none")
        return dense_model_config(hf, activation="swiglu", normalization="RMSNorm", eps_field="rms_norm_eps",
                                  add_bias_linear=attn_bias)

    def to_hf_config(self, m: ModelConfig, vocab_size: int) -> Dict[str, Any]:
        return dense_hf_config(m, vocab_size, model_type="llama", architecture="LlamaForCausalLM",
                               activation="silu", eps_field="rms_norm_eps", attention_bias=m.add_bias_linear,
                               mlp_bias=m.add_bias_linear, pretraining_tp=1)

    def matches(self, m: ModelConfig) -> bool:
        return is_llama_like(m) and not m.qk_layernorm and not (m.add_qkv_bias and not m.add_bias_linear)

    def mappings(self, m: ModelConfig) -> List[Mapping]:
        return outer_mappings(m) + for_layers(attention_templates(m) + mlp_templates(m), range(m.num_layers))
