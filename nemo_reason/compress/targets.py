"""Pruning targets: which sizes a model's layout can be pruned to, a parameter budget turned into sizes,
and the architecture of the pruned model.

Targets use Megatron's (and modelopt's ``mcore_minitron``) names, each an upper bound on one width or
the depth, unset = keep:

    hidden_size          embedding channels (every layer's input/output, norms, embeddings)
    ffn_hidden_size      MLP neurons (every MLP layer)
    num_attention_heads  query heads, a multiple of num_query_groups (heads are cut within each group,
                         equally, so GQA keeps its groups; K/V heads stay)
    mamba_num_heads      Mamba-2 heads, a multiple of mamba_num_groups (cut equally within each B/C group:
                         in_proj z/x/dt rows, conv1d x channels, A_log, D, dt_bias, the gated norm and
                         out_proj columns follow the kept heads)
    mamba_head_dim       Mamba-2 head size P (the same channels kept in every head)
    num_layers           depth (the least important layers are dropped; a hybrid keeps its pattern's
                         symbols for the kept layers)
    num_moe_experts      routed experts per MoE layer (the most important kept; the router's rows follow)
    moe_ffn_hidden_size  neurons of every routed expert (a MoE layer's MLP size; ``ffn_hidden_size`` is the
                         dense MLP layers' only: a target on a model without dense MLP layers is refused)
    moe_shared_expert_intermediate_size  neurons of the shared expert

:func:`layout_errors` names every target the layout cannot hold, with the legal values: a target
above the current size, heads that do not divide into the query groups or the Mamba groups, sizes not
divisible by the tensor-parallel size the pruned model will run at (heads, query groups, Mamba heads,
FFN, experts by TP/EP).

:func:`sizes_for_budget` turns ``params: N`` into sizes with the project's parameter counter
(:mod:`nemo_reason.planner.params`, what ``nemo-reason plan`` reports), by a documented search:

1. each free dimension gets its legal values (hidden/FFN: multiples of ``round_to`` and of TP; heads:
   multiples of the groups; head dim: multiples of ``round_to`` or 1 when smaller; layers: any);
2. one shrink ratio r for all free dimensions, from 1.00 down in steps of 0.01: each takes its largest
   legal value <= r x its size; the first r whose model fits in ``params`` wins;
3. fill: each free dimension in turn (the listed order) is raised to its largest legal value that
   still fits, so the result lies within one legal step of the budget in some dimension.

Depth under a budget only for uniform stacks (GPT): which hybrid layers go is decided by the layer
importance, after calibration; give a hybrid ``num_layers`` explicitly. Pure Python, no torch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Sequence

from nemo_reason.config.layers import MLP, layer_counts
from nemo_reason.config.model import ModelConfig

TARGET_FIELDS = ("hidden_size", "ffn_hidden_size", "num_attention_heads", "mamba_num_heads", "mamba_head_dim",
                 "num_layers", "num_moe_experts", "moe_ffn_hidden_size", "moe_shared_expert_intermediate_size")
# What the budget search shrinks by default (widths; depth changes the layer mix of a hybrid).
DEFAULT_BUDGET_FIELDS = ("ffn_hidden_size", "mamba_num_heads", "hidden_size")


def current_sizes(m: ModelConfig) -> Dict[str, Optional[int]]:
    """The model's value of every target field (None where the field does not apply)."""
    hybrid = m.type == "hybrid"
    return {"hidden_size": m.hidden_size, "ffn_hidden_size": m.ffn_hidden_size,
            "num_attention_heads": m.num_attention_heads,
            "mamba_num_heads": m.mamba_heads if hybrid else None,
            "mamba_head_dim": m.mamba_head_dim if hybrid else None,
            "num_layers": m.num_layers, "num_moe_experts": m.num_moe_experts if m.is_moe else None,
            "moe_ffn_hidden_size": (m.moe_ffn_hidden_size or m.ffn_hidden_size) if m.is_moe else None,
            "moe_shared_expert_intermediate_size": (m.moe_shared_expert_intermediate_size or None)
            if m.is_moe else None}


def _step(name: str, m: ModelConfig, tp: int, ep: int = 1) -> int:
    """The unit a target of ``name`` must be a multiple of."""
    groups = m.num_query_groups or m.num_attention_heads
    if name == "num_attention_heads":
        return math.lcm(groups, tp)
    if name == "mamba_num_heads":
        return math.lcm(m.mamba_num_groups, tp)
    if name in ("ffn_hidden_size", "moe_ffn_hidden_size", "moe_shared_expert_intermediate_size"):
        return tp
    if name == "num_moe_experts":
        return ep
    return 1


def legal_values(name: str, m: ModelConfig, tp: int = 1, ep: int = 1, limit: int = 12) -> str:
    """The legal values of target ``name`` as a short phrase (the error messages' wording)."""
    cur = current_sizes(m)[name]
    unit = _step(name, m, tp, ep)
    lo = max(unit, m.moe_router_topk) if name == "num_moe_experts" else unit
    vals = [v for v in range(lo, cur + 1) if v % unit == 0]
    shown = ", ".join(map(str, vals if len(vals) <= limit else vals[:4] + ["..."] + vals[-3:]))
    why = {"num_attention_heads": f"multiples of num_query_groups={m.num_query_groups or m.num_attention_heads}"
                                  + (f" and of tensor-parallel size {tp}" if tp > 1 else ""),
           "mamba_num_heads": f"multiples of mamba_num_groups={m.mamba_num_groups}"
                              + (f" and of tensor-parallel size {tp}" if tp > 1 else ""),
           "ffn_hidden_size": f"multiples of tensor-parallel size {tp}" if tp > 1 else "",
           "num_moe_experts": f"at least moe_router_topk={m.moe_router_topk}"
                              + (f", multiples of expert-parallel size {ep}" if ep > 1 else "")}.get(name, "")
    return f"{shown}" + (f" ({why})" if why else "") + f"; the model has {cur}"


def layout_errors(m: ModelConfig, targets: Dict[str, Optional[int]], tp: int = 1, pp: int = 1,
                  ep: int = 1) -> List[str]:
    """One message per target the layout cannot hold, naming the legal values; [] when all fit."""
    errors: List[str] = []
    cur = current_sizes(m)
    for name, want in targets.items():
        if want is None:
            continue
        if name not in TARGET_FIELDS:
            errors.append(f"{name} is not a pruning target; targets: {', '.join(TARGET_FIELDS)}")
            continue
        have = cur[name]
        if name == "ffn_hidden_size" and m.type in ("moe", "hybrid") and not layer_counts(m)[MLP]:
            errors.append(f"ffn_hidden_size={want}: the model has no dense MLP layers (every MLP is a MoE layer): "
                          f"prune its experts with moe_ffn_hidden_size (now {cur['moe_ffn_hidden_size']})"
                          + (" and moe_shared_expert_intermediate_size "
                             f"(now {cur['moe_shared_expert_intermediate_size']})"
                             if cur["moe_shared_expert_intermediate_size"] else ""))
            continue
        if have is None:
            errors.append(f"{name}={want}: the model (type={m.type}) has no {name.replace('num_', '')}")
            continue
        unit = _step(name, m, tp, ep)
        bad = want < 1 or want > have or want % unit
        if name == "num_moe_experts" and want < m.moe_router_topk:
            bad = True
        if name == "num_layers" and m.type != "hybrid" and want % pp:
            errors.append(f"num_layers={want} does not split over pipeline-parallel size {pp}: use a multiple of {pp}")
            continue
        if bad:
            errors.append(f"{name}={want} cannot be held: legal values are {legal_values(name, m, tp, ep)}")
    # Any hidden size works: the pruned config keeps the head size explicitly (kv_channels).
    return errors


def pruned_config(m: ModelConfig, sizes: Dict[str, int], hybrid_pattern: Optional[str] = None) -> ModelConfig:
    """``m`` with the pruned sizes; the head size, query groups and Mamba heads written out explicitly
    (their defaults derive from the hidden size, which pruning changes), a hybrid's pattern replaced
    by the kept layers' symbols (ratios then 0: the pattern alone)."""
    s = {k: v for k, v in sizes.items() if v is not None}
    kv = m.kv_channels or m.hidden_size // m.num_attention_heads
    groups = m.num_query_groups or m.num_attention_heads
    upd = dict(hidden_size=s.get("hidden_size", m.hidden_size), ffn_hidden_size=s.get("ffn_hidden_size", m.ffn_hidden_size),
               num_attention_heads=s.get("num_attention_heads", m.num_attention_heads), kv_channels=kv,
               num_query_groups=groups, num_layers=s.get("num_layers", m.num_layers))
    if m.type == "hybrid":
        upd.update(mamba_num_heads=s.get("mamba_num_heads", m.mamba_heads),
                   mamba_head_dim=s.get("mamba_head_dim", m.mamba_head_dim))
        if hybrid_pattern is not None:
            upd.update(hybrid_pattern=hybrid_pattern, num_layers=len(hybrid_pattern), hybrid_attention_ratio=0.0,
                       hybrid_mlp_ratio=0.0)
    if m.is_moe and "num_moe_experts" in s:
        upd["num_moe_experts"] = s["num_moe_experts"]
        upd["moe_router_topk"] = min(m.moe_router_topk, s["num_moe_experts"])
    if m.is_moe:
        upd["moe_ffn_hidden_size"] = s.get("moe_ffn_hidden_size", m.moe_ffn_hidden_size or m.ffn_hidden_size)
        if m.moe_shared_expert_intermediate_size:
            upd["moe_shared_expert_intermediate_size"] = s.get("moe_shared_expert_intermediate_size",
                                                               m.moe_shared_expert_intermediate_size)
    return dataclasses.replace(m, **upd)


def _choices(name: str, m: ModelConfig, round_to: int, tp: int) -> List[int]:
    cur = current_sizes(m)[name]
    unit = _step(name, m, tp)
    if name in ("hidden_size", "ffn_hidden_size", "moe_ffn_hidden_size", "moe_shared_expert_intermediate_size"):
        unit = math.lcm(unit, round_to if cur >= 4 * round_to else 1)
    elif name == "mamba_head_dim":
        unit = round_to if cur >= 2 * round_to else 1
    vals = [v for v in range(unit, cur + 1, unit)]
    return sorted(set(vals) | {cur})


def sizes_for_budget(m: ModelConfig, padded_vocab: int, params: float, *, fixed: Dict[str, int],
                     free: Sequence[str] = DEFAULT_BUDGET_FIELDS, round_to: int = 8, tp: int = 1) -> Dict[str, int]:
    """Sizes of the free dimensions (plus ``fixed``) whose model has at most ``params`` parameters
    (the search in the module docstring). ValueError when even the smallest legal model is larger."""
    from nemo_reason.planner.params import param_count

    cur = current_sizes(m)
    free = [f for f in free if cur.get(f) is not None and f not in fixed]
    if m.type == "hybrid" and ("num_layers" in free or "num_layers" in fixed):
        raise ValueError("a parameter budget does not choose a hybrid's depth (which layers go is known only "
                         "after calibration): prune a hybrid's depth with explicit sizes, or in a prune step of its own")
    choices = {f: _choices(f, m, round_to, tp) for f in free}

    def count(sizes: Dict[str, int]) -> int:
        return param_count(pruned_config(m, {**fixed, **sizes}), padded_vocab)

    def at_ratio(r: float) -> Dict[str, int]:
        out = {}
        for f in free:
            ok = [v for v in choices[f] if v <= r * cur[f] + 1e-9]
            out[f] = ok[-1] if ok else choices[f][0]
        return out

    best = None
    for i in range(100, 0, -1):
        sizes = at_ratio(i / 100)
        if count(sizes) <= params:
            best = sizes
            break
    if best is None:
        smallest = count(at_ratio(0.0))
        raise ValueError(f"params={params:.4g}: the smallest model the free dimensions ({', '.join(free)}) reach "
                         f"has {smallest:,} parameters; prune more dimensions or raise the budget")
    for f in free:  # fill
        for v in reversed(choices[f]):
            if v <= best[f]:
                break
            trial = {**best, f: v}
            if count(trial) <= params:
                best = trial
                break
    return {**fixed, **best}
