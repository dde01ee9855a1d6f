"""Nemotron-H (``nemotron_h``): the hybrid Mamba-2 / attention / MLP (/ MoE) decoder.

HF ``NemotronHForCausalLM`` <-> Megatron ``MambaModel`` (``model.type=hybrid``). The layer pattern is
HF's ``layers_block_type`` (transformers 5: ``linear_attention``, ``full_attention``, ``mlp``,
``moe``) or ``hybrid_override_pattern`` (the older configs: ``M``, ``*``, ``-``, ``E``), which is
our ``model.hybrid_pattern``; export writes both. Every HF block is ``norm`` + ``mixer``; per layer
``{layer}`` by kind, our canonical name <-> ``backbone.layers.{layer}.`` + ::

    M  decoder.layers.{layer}.mixer.in_proj.layer_norm_weight         <-> norm.weight
       decoder.layers.{layer}.mixer.in_proj.weight   [z|x|B|C|dt, h]  <-> mixer.in_proj.weight  (same order)
       decoder.layers.{layer}.mixer.conv1d.{weight,bias}   [x|B|C]    <-> mixer.conv1d.{weight,bias}
       decoder.layers.{layer}.mixer.{A_log,D,dt_bias}     [heads]     <-> mixer.{A_log,D,dt_bias}
       decoder.layers.{layer}.mixer.norm.weight          [d_inner]    <-> mixer.norm.weight  (gated, per group)
       decoder.layers.{layer}.mixer.out_proj.weight                   <-> mixer.out_proj.weight
    *  decoder.layers.{layer}.self_attention.linear_qkv.layer_norm_weight <-> norm.weight
       decoder.layers.{layer}.self_attention.linear_qkv.weight        <-> mixer.{q,k,v}_proj.weight  (QKV)
       decoder.layers.{layer}.self_attention.linear_proj.weight       <-> mixer.o_proj.weight
    -  decoder.layers.{layer}.mlp.linear_fc1.layer_norm_weight        <-> norm.weight
       decoder.layers.{layer}.mlp.linear_fc{1,2}.weight               <-> mixer.{up,down}_proj.weight
    E  decoder.layers.{layer}.mlp.linear_fc1.layer_norm_weight        <-> norm.weight
       decoder.layers.{layer}.mlp.router.weight / .expert_bias        <-> mixer.gate.weight / .e_score_correction_bias
       ...mlp.experts.local_experts.{e}.linear_fc{1,2}.weight         <-> mixer.experts.{e}.{up,down}_proj.weight
       ...mlp.shared_experts.linear_fc{1,2}.weight                    <-> mixer.shared_experts.{up,down}_proj.weight

plus ``embedding.word_embeddings.weight`` <-> ``backbone.embeddings.weight``,
``decoder.final_norm.weight`` <-> ``backbone.norm_f.weight``, ``output_layer.weight`` <->
``lm_head.weight``. The Mamba tensors need no re-arrangement: HF's ``in_proj`` rows are ``[z (gate),
x, B, C, dt]`` and its conv channels ``[x, B, C]``, Megatron's order; tensor parallelism splits
them per section on load (``in_proj.weight.{z,x,B,C,dt}`` sharded keys), not here. Both use the
gated RMSNorm ``norm(y * silu(z))`` over ``d_inner / n_groups`` channels per group
(``norm_before_gate=False``), attention without position embeddings, squared-ReLU MLPs.

MoE layers (Nemotron-3 style): sigmoid router with an expert-score bias (Megatron's
``moe_router_enable_expert_bias``), top-k weights renormalised (``norm_topk_prob=true``, which
Megatron's sigmoid routing always does), ``routed_scaling_factor`` = ``moe_router_topk_scaling_factor``,
non-gated squared-ReLU routed and shared experts.

Not represented (errors name the field and value): biases (``use_bias``, ``mlp_bias``,
``attention_bias``), ``use_conv_bias=false``, ``conv_kernel`` != 4, ``mamba_hidden_act`` != silu,
``mlp_hidden_act`` != relu2, ``layer_norm_epsilon`` != 1e-5 (Megatron's Mamba mixer fixes its gated
norm's epsilon at 1e-5, HF uses the config's), ``residual_in_fp32``, multi-token prediction
(``num_nextn_predict_layers`` > 0), sliding windows, and for MoE: grouped routing (``n_group`` > 1),
``moe_latent_size``, ``norm_topk_prob=false`` with top-k > 1 (HF always has one shared expert).
One difference is left to the parity gate: HF clamps the Mamba step ``dt`` below at
``time_step_min`` in its scan, Megatron does not clamp; it only matters where
``softplus(dt + dt_bias) < time_step_min`` (1e-3 by default).
The CPU path of transformers' mixer is its PyTorch fallback (no mamba-ssm / causal-conv1d here).
"""

from __future__ import annotations

from typing import Any, Dict, List

from nemo_reason.bridge import BridgeError, register_bridge
from nemo_reason.bridge.base import Bridge, FieldChecks, HFConfig, Problems
from nemo_reason.bridge.llama import head_dim
from nemo_reason.bridge.mapping import QKV, Direct, Mapping
from nemo_reason.config.layers import ATTENTION, MAMBA, MLP, MOE
from nemo_reason.config.model import ModelConfig
from nemo_reason.models.pattern import allocate

# transformers 5 layer kinds <-> pattern symbols
KINDS = {"linear_attention": MAMBA, "full_attention": ATTENTION, "mlp": MLP, "moe": MOE}
SYMBOL_KIND = {v: k for k, v in KINDS.items()}
MIXER_EPS = 1e-5  # Megatron's MambaMixer / our portable mixer: the gated norm's epsilon
MIXER_TENSORS = ("A_log", "D", "dt_bias", "in_proj.weight", "conv1d.weight", "conv1d.bias", "norm.weight",
                 "out_proj.weight")


def pattern_of(hf: HFConfig) -> str:
    """The layer pattern of a Nemotron-H config (``layers_block_type`` or ``hybrid_override_pattern``)."""
    kinds = hf.doc.get("layers_block_type") or hf.doc.get("layer_types")
    if kinds:
        bad = [k for k in kinds if k not in KINDS]
        if bad:
            raise hf.fail("layers_block_type", kinds, f"unknown layer kinds {sorted(set(bad))}; known: "
                          f"{', '.join(KINDS)}")
        return "".join(KINDS[k] for k in kinds)
    pattern = hf.doc.get("hybrid_override_pattern")
    if not pattern:
        raise BridgeError(f"{hf.source}: nemotron_h needs layers_block_type or hybrid_override_pattern")
    bad = set(pattern) - set(SYMBOL_KIND)
    if bad:
        raise hf.fail("hybrid_override_pattern", pattern, f"unknown symbols {sorted(bad)} (M, *, -, E only; "
                      "pipeline '|' and MTP '/' parts are not represented)")
    return pattern


def layers_by_kind(m: ModelConfig) -> List[str]:
    return list(allocate(m.num_layers, m.hybrid_attention_ratio, m.hybrid_mlp_ratio, m.hybrid_pattern))


def _want(hf: HFConfig, name: str, allowed, default, why: str):
    v = hf.get(name, default)
    if v not in allowed:
        raise hf.fail(name, v, why)
    return v


@register_bridge
class NemotronHBridge(FieldChecks, Bridge):
    """Nemotron-H hybrid decoder (Mamba-2 groups, attention without RoPE, squared-ReLU MLP/MoE layers)."""

    model_type = "nemotron_h"
    architectures = ("NemotronHForCausalLM",)

    # --- config ---------------------------------------------------------------------------------
    def to_model_config(self, hf: HFConfig) -> ModelConfig:
        pattern = pattern_of(hf)
        for name in ("use_bias", "mlp_bias", "attention_bias", "mamba_proj_bias"):
            _want(hf, name, (False,), False, "biases are not represented (Megatron's Mamba mixer asserts "
                  "bias=False; the hybrid converts with model.add_bias_linear=false)")
        _want(hf, "residual_in_fp32", (False,), False, "fp32 residuals are not represented (Megatron's "
              "fp32_residual_connection is not a model.* field)")
        _want(hf, "use_conv_bias", (True,), True, "Megatron's Mamba mixer always has a conv1d bias")
        _want(hf, "conv_kernel", (4,), 4, "Megatron's Mamba mixer uses d_conv=4")
        _want(hf, "mamba_hidden_act", ("silu",), "silu", "the Mamba-2 mixer uses SiLU")
        _want(hf, "mlp_hidden_act", ("relu2",), "relu2", "Nemotron-H MLPs are squared ReLU (relu2)")
        _want(hf, "num_nextn_predict_layers", (0,), 0, "multi-token prediction layers are not represented")
        _want(hf, "sliding_window", (None,), None, "sliding-window attention is not supported")
        eps = float(hf.get("layer_norm_epsilon", 1e-5))
        if eps != MIXER_EPS:
            raise hf.fail("layer_norm_epsilon", eps, f"Megatron's Mamba mixer normalises with eps={MIXER_EPS} "
                          "whatever the config says; only that value converts exactly")
        hidden, heads = int(hf.require("hidden_size")), int(hf.require("num_attention_heads"))
        fields: Dict[str, Any] = {}
        if MOE in pattern:
            fields = self._moe_fields(hf)
        hd = hf.get("head_dim") or hf.get("attention_head_dim")
        return ModelConfig(
            type="hybrid",
            hybrid_pattern=pattern,
            num_layers=len(pattern),
            hidden_size=hidden,
            ffn_hidden_size=int(hf.get("intermediate_size", 4 * hidden)),
            num_attention_heads=heads,
            num_query_groups=int(hf.get("num_key_value_heads", heads)),
            kv_channels=int(hd) if hd else None,
            activation="squared_relu",
            normalization="RMSNorm",
            layernorm_epsilon=eps,
            add_bias_linear=False,
            position_embedding_type="none",
            max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
            untie_embeddings_and_output_weights=not bool(hf.get("tie_word_embeddings", False)),
            vocab_size=int(hf.require("vocab_size")),
            hidden_dropout=0.0,
            attention_dropout=float(hf.get("attention_dropout", 0.0)),
            init_method_std=float(hf.get("initializer_range", 0.02)),
            mamba_state_dim=int(hf.require("ssm_state_size")),
            mamba_head_dim=int(hf.require("mamba_head_dim")),
            mamba_num_heads=int(hf.require("mamba_num_heads")),
            mamba_num_groups=int(hf.get("n_groups", hf.get("mamba_n_groups", 8))),
            mamba_chunk_size=int(hf.get("chunk_size", hf.get("mamba_chunk_size", 128))),
            **fields,
        )

    def _moe_fields(self, hf: HFConfig) -> Dict[str, Any]:
        experts = int(hf.get("n_routed_experts", hf.get("num_local_experts", 0)) or 0)
        topk = int(hf.require("num_experts_per_tok"))
        if experts < 1 or not 1 <= topk <= experts:
            raise hf.fail("num_experts_per_tok", topk, f"must be between 1 and n_routed_experts={experts}")
        if int(hf.get("n_group", 1)) != 1 or int(hf.get("topk_group", 1)) != 1:
            raise hf.fail("n_group", hf.get("n_group"), "grouped (device-limited) routing is not represented; "
                          "n_group=1, topk_group=1 only")
        if hf.get("moe_latent_size") is not None:
            raise hf.fail("moe_latent_size", hf.get("moe_latent_size"), "latent MoE projections are not represented")
        if not hf.get("norm_topk_prob", True) and topk > 1:
            raise hf.fail("norm_topk_prob", False, "Megatron's sigmoid routing always renormalises the top-k "
                          "weights")
        # transformers' NemotronHMoE always holds one shared expert of this size (n_shared_experts unused).
        shared = int(hf.require("moe_shared_expert_intermediate_size"))
        if shared <= 0:
            raise hf.fail("moe_shared_expert_intermediate_size", shared, "NemotronHMoE always has a shared expert")
        scale = float(hf.get("routed_scaling_factor", 1.0))
        return {
            "num_moe_experts": experts, "moe_router_topk": topk,
            "moe_ffn_hidden_size": int(hf.require("moe_intermediate_size")),
            "moe_shared_expert_intermediate_size": shared,
            "moe_shared_expert_gate": False,
            "moe_router_score_function": "sigmoid", "moe_router_enable_expert_bias": True,
            "moe_router_pre_softmax": False,
            "moe_router_topk_scaling_factor": None if scale == 1.0 else scale,
            "moe_router_load_balancing_type": "seq_aux_loss", "moe_aux_loss_coeff": 1e-4, "moe_z_loss_coeff": None,
        }

    def to_hf_config(self, m: ModelConfig, vocab_size: int) -> Dict[str, Any]:
        kinds = layers_by_kind(m)
        d_inner = m.mamba_heads * m.mamba_head_dim
        cfg: Dict[str, Any] = {
            "architectures": ["NemotronHForCausalLM"],
            "model_type": "nemotron_h",
            "vocab_size": vocab_size,
            "hidden_size": m.hidden_size,
            "layers_block_type": [SYMBOL_KIND[k] for k in kinds],
            "hybrid_override_pattern": "".join(kinds),
            "num_hidden_layers": len(kinds),
            "num_attention_heads": m.num_attention_heads,
            "num_key_value_heads": m.num_query_groups or m.num_attention_heads,
            "head_dim": head_dim(m),
            "intermediate_size": m.ffn_hidden_size,
            "mlp_hidden_act": "relu2",
            "max_position_embeddings": m.max_position_embeddings,
            "attention_bias": False, "mlp_bias": False, "use_bias": False, "mamba_proj_bias": False,
            "attention_dropout": m.attention_dropout,
            "hidden_dropout": 0.0,
            "layer_norm_epsilon": m.layernorm_epsilon,
            "tie_word_embeddings": not m.untie_embeddings_and_output_weights,
            "initializer_range": m.init_method_std,
            "residual_in_fp32": False,
            "ssm_state_size": m.mamba_state_dim,
            "mamba_num_heads": m.mamba_heads,
            "mamba_head_dim": m.mamba_head_dim,
            "n_groups": m.mamba_num_groups,
            "conv_kernel": 4,
            "expand": max(1, d_inner // m.hidden_size),
            "use_conv_bias": True,
            "mamba_hidden_act": "silu",
            "chunk_size": m.mamba_chunk_size,
            "num_nextn_predict_layers": 0,
            "sliding_window": None,
        }
        if m.is_moe:
            cfg.update({
                "n_routed_experts": m.num_moe_experts, "num_experts_per_tok": m.moe_router_topk,
                "moe_intermediate_size": m.moe_ffn_hidden_size or m.ffn_hidden_size,
                "n_shared_experts": 1,
                "moe_shared_expert_intermediate_size": m.moe_shared_expert_intermediate_size,
                "norm_topk_prob": True, "routed_scaling_factor": m.moe_router_topk_scaling_factor or 1.0,
                "n_group": 1, "topk_group": 1, "moe_latent_size": None,
            })
        return cfg

    export_summary = ("Nemotron-H is a hybrid of Mamba-2, attention without position embeddings and squared-ReLU "
                      "MLPs, RMSNorm with eps 1e-5, no biases; MoE layers route by sigmoid with an expert bias")

    def export_problems(self, m: ModelConfig) -> List[str]:
        """``model.field=value`` for every setting this architecture cannot hold."""
        bad = Problems(m)
        want = bad.want

        want("type", m.type == "hybrid")
        want("activation", m.activation == "squared_relu")
        want("normalization", m.normalization == "RMSNorm")
        want("position_embedding_type", m.position_embedding_type == "none")
        want("add_bias_linear", not m.add_bias_linear)
        want("add_qkv_bias", not m.add_qkv_bias)
        want("qk_layernorm", not m.qk_layernorm)
        want("layernorm_zero_centered_gamma", not m.layernorm_zero_centered_gamma)
        want("layernorm_epsilon", m.layernorm_epsilon == MIXER_EPS)
        if m.type == "hybrid" and m.is_moe:
            want("moe_router_score_function", m.moe_router_score_function == "sigmoid")
            want("moe_router_enable_expert_bias", m.moe_router_enable_expert_bias)
            want("moe_shared_expert_gate", not m.moe_shared_expert_gate)
            want("moe_shared_expert_intermediate_size", bool(m.moe_shared_expert_intermediate_size))
            want("moe_router_pre_softmax", not m.moe_router_pre_softmax)
        return bad

    # --- tensors --------------------------------------------------------------------------------
    def mappings(self, m: ModelConfig) -> List[Mapping]:
        out: List[Mapping] = [Direct("embedding.word_embeddings.weight", "backbone.embeddings.weight"),
                              Direct("decoder.final_norm.weight", "backbone.norm_f.weight")]
        if m.untie_embeddings_and_output_weights:
            out.append(Direct("output_layer.weight", "lm_head.weight"))
        for i, kind in enumerate(layers_by_kind(m)):
            out += self._layer(m, i, kind)
        return out

    def _layer(self, m: ModelConfig, i: int, kind: str) -> List[Mapping]:
        ours, hf = f"decoder.layers.{i}", f"backbone.layers.{i}"
        norm = f"{hf}.norm.weight"
        if kind == MAMBA:
            return ([Direct(f"{ours}.mixer.in_proj.layer_norm_weight", norm)]
                    + [Direct(f"{ours}.mixer.{t}", f"{hf}.mixer.{t}") for t in MIXER_TENSORS])
        if kind == ATTENTION:
            att = f"{ours}.self_attention"
            return [Direct(f"{att}.linear_qkv.layer_norm_weight", norm),
                    QKV(f"{att}.linear_qkv.weight", f"{hf}.mixer.q_proj.weight", f"{hf}.mixer.k_proj.weight",
                        f"{hf}.mixer.v_proj.weight", heads=m.num_attention_heads,
                        groups=m.num_query_groups or m.num_attention_heads, head_dim=head_dim(m)),
                    Direct(f"{att}.linear_proj.weight", f"{hf}.mixer.o_proj.weight")]
        mlp = f"{ours}.mlp"
        out: List[Mapping] = [Direct(f"{mlp}.linear_fc1.layer_norm_weight", norm)]
        if kind == MLP:
            return out + [Direct(f"{mlp}.linear_fc1.weight", f"{hf}.mixer.up_proj.weight"),
                          Direct(f"{mlp}.linear_fc2.weight", f"{hf}.mixer.down_proj.weight")]
        out += [Direct(f"{mlp}.router.weight", f"{hf}.mixer.gate.weight"),
                Direct(f"{mlp}.router.expert_bias", f"{hf}.mixer.gate.e_score_correction_bias")]
        for e in range(m.num_moe_experts):
            exp, hfe = f"{mlp}.experts.local_experts.{e}", f"{hf}.mixer.experts.{e}"
            out += [Direct(f"{exp}.linear_fc1.weight", f"{hfe}.up_proj.weight"),
                    Direct(f"{exp}.linear_fc2.weight", f"{hfe}.down_proj.weight")]
        return out + [Direct(f"{mlp}.shared_experts.linear_fc1.weight", f"{hf}.mixer.shared_experts.up_proj.weight"),
                      Direct(f"{mlp}.shared_experts.linear_fc2.weight", f"{hf}.mixer.shared_experts.down_proj.weight")]

    # --- the parity gate's probe points ---------------------------------------------------------
    def hf_embedding(self, hf_model):
        return hf_model.model.embeddings

    def hf_final_norm(self, hf_model):
        return hf_model.model.norm_f
