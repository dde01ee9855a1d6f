"""Mixture-of-Experts decoders: Mixtral (``mixtral``), Qwen2-MoE (``qwen2_moe``), Qwen3-MoE (``qwen3_moe``).

HF ``MixtralForCausalLM`` / ``Qwen2MoeForCausalLM`` / ``Qwen3MoeForCausalLM`` <-> Megatron ``GPTModel``
with ``type=moe``: Llama's attention (Qwen2-MoE adds q/k/v biases, Qwen3-MoE q/k norms; see
:mod:`.llama`, :mod:`.qwen`) and, per MoE layer ``{layer}``, expert ``{expert}``::

    decoder.layers.{layer}.mlp.linear_fc1.layer_norm_weight             <-> post_attention_layernorm.weight
    decoder.layers.{layer}.mlp.router.weight                            <-> {moe}.gate.weight          [E, hidden]
    ...mlp.experts.local_experts.{expert}.linear_fc1.weight  [gate; up] <-> {moe}.experts.{expert}.{gate,up}  (GatedMLP)
    ...mlp.experts.local_experts.{expert}.linear_fc2.weight             <-> {moe}.experts.{expert}.{down}
    ...mlp.shared_experts.linear_fc1.weight                  [gate; up] <-> mlp.shared_expert.{gate,up}_proj (Qwen2)
    ...mlp.shared_experts.linear_fc2.weight                             <-> mlp.shared_expert.down_proj
    ...mlp.shared_experts.gate_weight                        [1, hidden] <-> mlp.shared_expert_gate.weight

where ``{moe}`` is ``model.layers.{layer}.block_sparse_moe`` with experts ``w1`` (gate), ``w3`` (up),
``w2`` (down) for Mixtral and ``model.layers.{layer}.mlp`` with ``gate_proj``/``up_proj``/``down_proj``
for Qwen. Those are the names on disk: transformers 5 fuses the experts into 3-D ``gate_up_proj`` /
``down_proj`` parameters in memory but ``save_pretrained`` writes them back per expert, as the hub
holds them.

Routing, which is where the three differ (all softmax over the router logits, top-k):

- Mixtral: softmax, top-k, renormalise the k weights = Megatron's top-k on the logits then a
  softmax over those k (``moe_router_pre_softmax=false``).
- Qwen ``norm_topk_prob=false`` (Qwen1.5/2-MoE, Qwen3-MoE's config default): the k softmax
  weights as they are = ``moe_router_pre_softmax=true``; ``norm_topk_prob=true`` (released
  Qwen3-MoE) = ``pre_softmax=false``. No scaling factor (``moe_router_topk_scaling_factor=null``).
- Qwen2-MoE's shared expert is added with the weight ``sigmoid(shared_expert_gate(x))``, which is
  Megatron's ``moe_shared_expert_gate``.

Dense layers of Qwen MoE models (``mlp_only_layers``, ``decoder_sparse_step``) map to Megatron's
``moe_layer_freq = N`` (MoE at layers 0, N, 2N, ...; dense ``intermediate_size`` MLPs between) when
the HF pattern is exactly that; any other pattern stops naming the two fields. Also not
represented (errors name the field): sliding-window attention, RoPE scaling, Mixtral's
``router_jitter_noise`` (training-time input noise), Qwen3-MoE ``attention_bias=true``, activations
other than SiLU; on export, sigmoid routing, expert bias, a top-k scaling factor, a shared expert
without gate (Qwen2-MoE always gates it) or with Mixtral/Qwen3-MoE (they have none).
"""

from __future__ import annotations

from typing import Any, Dict, List

from nemo_reason.bridge import register_bridge
from nemo_reason.bridge.base import Bridge, FieldChecks, HFConfig, Problems
from nemo_reason.bridge.llama import (OUR_LAYER, attention_templates, dense_hf_config, dense_model_config,
                                      mlp_templates, outer_mappings)
from nemo_reason.bridge.mapping import Direct, GatedMLP, Mapping, for_layers
from nemo_reason.config.model import ModelConfig


def moe_layers(m: ModelConfig) -> List[int]:
    """Indices of the MoE layers (Megatron's integer ``moe_layer_freq``: every N-th, from layer 0)."""
    return [i for i in range(m.num_layers) if i % m.moe_layer_freq == 0]


def expert_templates(m: ModelConfig, hf_moe: str, gate: str, up: str, down: str) -> List[Mapping]:
    """Router and routed experts of MoE layer ``{layer}`` (every expert filled in here)."""
    ours = f"{OUR_LAYER}.mlp"
    out: List[Mapping] = [Direct(f"{ours}.router.weight", f"{hf_moe}.gate.weight")]
    for e in range(m.num_moe_experts):
        exp, hf = f"{ours}.experts.local_experts.{e}", f"{hf_moe}.experts.{e}"
        out.append(GatedMLP(f"{exp}.linear_fc1.weight", f"{hf}.{gate}.weight", f"{hf}.{up}.weight"))
        out.append(Direct(f"{exp}.linear_fc2.weight", f"{hf}.{down}.weight"))
    return out


def shared_expert_templates(hf_moe: str) -> List[Mapping]:
    """Qwen2-MoE's gated shared expert of layer ``{layer}``."""
    ours, hf = f"{OUR_LAYER}.mlp.shared_experts", f"{hf_moe}.shared_expert"
    return [GatedMLP(f"{ours}.linear_fc1.weight", f"{hf}.gate_proj.weight", f"{hf}.up_proj.weight"),
            Direct(f"{ours}.linear_fc2.weight", f"{hf}.down_proj.weight"),
            Direct(f"{ours}.gate_weight", f"{hf_moe}.shared_expert_gate.weight")]


def pre_mlp_norm_template(hf_norm: str = "model.layers.{layer}.post_attention_layernorm") -> List[Mapping]:
    return [Direct(f"{OUR_LAYER}.mlp.linear_fc1.layer_norm_weight", f"{hf_norm}.weight")]


def _qwen_moe_freq(hf: HFConfig, num_layers: int) -> int:
    """Megatron's ``moe_layer_freq`` for Qwen's ``decoder_sparse_step`` / ``mlp_only_layers``."""
    step = int(hf.get("decoder_sparse_step", 1))
    dense_only = sorted(int(i) for i in hf.get("mlp_only_layers", []) or [])
    if step < 1:
        raise hf.fail("decoder_sparse_step", step, "must be >= 1")
    moe = [i for i in range(num_layers) if i not in dense_only and (i + 1) % step == 0]
    if not moe:
        raise hf.fail("mlp_only_layers", dense_only, f"with decoder_sparse_step={step} no layer is MoE: "
                      "a dense model (convert it as qwen2 / qwen3)")
    for n in range(1, num_layers + 1):
        if moe == [i for i in range(num_layers) if i % n == 0]:
            return n
    raise hf.fail("mlp_only_layers", dense_only,
                  f"with decoder_sparse_step={step} the MoE layers are {moe}; Megatron's moe_layer_freq=N "
                  "puts them at layers 0, N, 2N, ... only (model.moe_layer_freq is an integer)")


def _routing(hf: HFConfig, default_norm: bool) -> Dict[str, Any]:
    norm = bool(hf.get("norm_topk_prob", default_norm))
    return {"moe_router_score_function": "softmax", "moe_router_pre_softmax": not norm,
            "moe_router_topk_scaling_factor": None, "moe_router_enable_expert_bias": False}


def _moe_fields(hf: HFConfig, experts_fields: tuple, expert_ffn_field: str) -> Dict[str, Any]:
    """Expert count, top-k, expert size and the aux loss; the expert count under any of
    ``experts_fields`` (transformers 5 writes Qwen3-MoE's ``num_experts`` as ``num_local_experts``)."""
    experts_field = next((f for f in experts_fields if hf.get(f) is not None), experts_fields[0])
    experts = int(hf.require(experts_field))
    topk = int(hf.require("num_experts_per_tok"))
    if experts < 1 or not 1 <= topk <= experts:
        raise hf.fail("num_experts_per_tok", topk, f"must be between 1 and {experts_field}={experts}")
    return {"type": "moe", "num_moe_experts": experts, "moe_router_topk": topk,
            "moe_ffn_hidden_size": int(hf.require(expert_ffn_field)),
            "moe_router_load_balancing_type": "aux_loss",
            "moe_aux_loss_coeff": float(hf.get("router_aux_loss_coef", 0.0)), "moe_z_loss_coeff": None}


class _MoEBridge(FieldChecks, Bridge):
    """What the three share: export checks on the routing and the layout of the layers."""

    hf_moe = "model.layers.{layer}.mlp"
    expert_names = ("gate_proj", "up_proj", "down_proj")
    shared_expert = False          # the architecture always has a gated shared expert
    qk_layernorm = False
    qkv_bias = False
    dense_layers = True            # may hold dense MLP layers (moe_layer_freq > 1)

    def export_problems(self, m: ModelConfig) -> List[str]:
        """``model.field=value`` for every setting this architecture cannot hold."""
        bad = Problems(m)
        want = bad.want

        want("type", m.type == "moe")
        want("activation", m.activation == "swiglu")
        want("normalization", m.normalization == "RMSNorm")
        want("position_embedding_type", m.position_embedding_type == "rope")
        want("layernorm_zero_centered_gamma", not m.layernorm_zero_centered_gamma)
        want("add_bias_linear", not m.add_bias_linear)
        want("qk_layernorm", m.qk_layernorm == self.qk_layernorm)
        if not self.qkv_bias:
            want("add_qkv_bias", not m.add_qkv_bias)
        if m.type != "moe":
            return bad
        want("moe_router_score_function", m.moe_router_score_function == "softmax")
        want("moe_router_enable_expert_bias", not m.moe_router_enable_expert_bias)
        want("moe_router_topk_scaling_factor", not m.moe_router_topk_scaling_factor)
        if not self.dense_layers:
            want("moe_layer_freq", m.moe_layer_freq == 1)
            want("moe_router_pre_softmax", not m.moe_router_pre_softmax)
        if self.shared_expert:
            want("moe_shared_expert_intermediate_size", bool(m.moe_shared_expert_intermediate_size))
            want("moe_shared_expert_gate", m.moe_shared_expert_gate)
        else:
            want("moe_shared_expert_intermediate_size", not m.moe_shared_expert_intermediate_size)
        return bad

    def mappings(self, m: ModelConfig) -> List[Mapping]:
        moe = set(moe_layers(m))
        gate, up, down = self.expert_names
        routed = pre_mlp_norm_template() + expert_templates(m, self.hf_moe, gate, up, down)
        if m.moe_shared_expert_intermediate_size:
            routed += shared_expert_templates(self.hf_moe)
        out = outer_mappings(m) + for_layers(attention_templates(m), range(m.num_layers))
        out += for_layers(routed, sorted(moe))
        return out + for_layers(mlp_templates(m), [i for i in range(m.num_layers) if i not in moe])

    def _hf_common(self, m: ModelConfig, vocab_size: int, architecture: str, **fields) -> Dict[str, Any]:
        cfg = dense_hf_config(m, vocab_size, model_type=self.model_type, architecture=architecture,
                              activation="silu", eps_field="rms_norm_eps", **fields)
        cfg.update(num_experts_per_tok=m.moe_router_topk, router_aux_loss_coef=m.moe_aux_loss_coeff,
                   output_router_logits=False)
        return cfg


@register_bridge
class MixtralBridge(_MoEBridge):
    """Mixtral sparse MoE decoder (GQA, SwiGLU experts, top-k softmax routing renormalised)."""

    model_type = "mixtral"
    architectures = ("MixtralForCausalLM",)
    hf_moe = "model.layers.{layer}.block_sparse_moe"
    expert_names = ("w1", "w3", "w2")
    dense_layers = False

    def to_model_config(self, hf: HFConfig) -> ModelConfig:
        hf.expect("hidden_act", ("silu",), "silu")
        jitter = hf.get("router_jitter_noise", 0.0)
        if jitter:
            raise hf.fail("router_jitter_noise", jitter, "training-time router input noise is not represented "
                          "(Megatron's moe_input_jitter_eps is not a model.* field); set it to 0.0")
        fields = _moe_fields(hf, ("num_local_experts", "num_experts"), "intermediate_size")
        return dense_model_config(hf, activation="swiglu", normalization="RMSNorm", eps_field="rms_norm_eps",
                                  **fields, moe_layer_freq=1, **_routing(hf, default_norm=True))

    def to_hf_config(self, m: ModelConfig, vocab_size: int) -> Dict[str, Any]:
        cfg = self._hf_common(m, vocab_size, "MixtralForCausalLM", sliding_window=None, router_jitter_noise=0.0,
                              num_local_experts=m.num_moe_experts)
        cfg["intermediate_size"] = m.moe_ffn_hidden_size or m.ffn_hidden_size
        return cfg


class _QwenMoE(_MoEBridge):
    def _qwen_fields(self, hf: HFConfig, default_norm: bool) -> Dict[str, Any]:
        hf.expect("hidden_act", ("silu",), "silu")
        layers = int(hf.require("num_hidden_layers"))
        fields = _moe_fields(hf, ("num_experts", "num_local_experts"), "moe_intermediate_size")
        fields["moe_layer_freq"] = _qwen_moe_freq(hf, layers)
        return {**fields, **_routing(hf, default_norm)}

    def _qwen_hf(self, m: ModelConfig, vocab_size: int, architecture: str, **fields) -> Dict[str, Any]:
        moe = set(moe_layers(m))
        return self._hf_common(
            m, vocab_size, architecture, num_experts=m.num_moe_experts,
            moe_intermediate_size=m.moe_ffn_hidden_size or m.ffn_hidden_size,
            norm_topk_prob=not m.moe_router_pre_softmax, decoder_sparse_step=1,
            mlp_only_layers=[i for i in range(m.num_layers) if i not in moe],
            use_sliding_window=False, sliding_window=None, max_window_layers=m.num_layers, **fields)


@register_bridge
class Qwen2MoeBridge(_QwenMoE):
    """Qwen1.5/Qwen2-MoE decoder (q/k/v biases, routed experts plus a sigmoid-gated shared expert)."""

    model_type = "qwen2_moe"
    architectures = ("Qwen2MoeForCausalLM",)
    shared_expert = True
    qkv_bias = True

    def to_model_config(self, hf: HFConfig) -> ModelConfig:
        fields = self._qwen_fields(hf, default_norm=False)
        shared = int(hf.get("shared_expert_intermediate_size", 0))
        if shared <= 0:
            raise hf.fail("shared_expert_intermediate_size", shared, "Qwen2-MoE's shared expert (and its gate) "
                          "must have a positive size")
        return dense_model_config(hf, activation="swiglu", normalization="RMSNorm", eps_field="rms_norm_eps",
                                  add_qkv_bias=bool(hf.get("qkv_bias", True)), **fields,
                                  moe_shared_expert_intermediate_size=shared, moe_shared_expert_gate=True)

    def to_hf_config(self, m: ModelConfig, vocab_size: int) -> Dict[str, Any]:
        return self._qwen_hf(m, vocab_size, "Qwen2MoeForCausalLM", qkv_bias=bool(m.add_qkv_bias),
                             shared_expert_intermediate_size=m.moe_shared_expert_intermediate_size)


@register_bridge
class Qwen3MoeBridge(_QwenMoE):
    """Qwen3-MoE decoder (q/k RMSNorms per head, routed experts, no shared expert)."""

    model_type = "qwen3_moe"
    architectures = ("Qwen3MoeForCausalLM",)
    qk_layernorm = True

    def to_model_config(self, hf: HFConfig) -> ModelConfig:
        hf.expect("attention_bias", (False,), False)
        fields = self._qwen_fields(hf, default_norm=False)
        return dense_model_config(hf, activation="swiglu", normalization="RMSNorm", eps_field="rms_norm_eps",
                                  qk_layernorm=True, **fields)

    def to_hf_config(self, m: ModelConfig, vocab_size: int) -> Dict[str, Any]:
        return self._qwen_hf(m, vocab_size, "Qwen3MoeForCausalLM", attention_bias=False)
