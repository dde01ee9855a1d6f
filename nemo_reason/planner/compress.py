"""The ``plan`` of a pipeline's ``prune`` steps: the shape each one prunes to and its parameter count.

For every ``prune`` step, in pipeline order (a later prune step starts from the earlier one's
result), :func:`prune_plans` gives the architecture before and after: the explicit targets, or the
sizes a parameter budget ``params`` resolves to (the same search the step runs,
:func:`nemo_reason.compress.targets.sizes_for_budget`), the layout errors the step would refuse
with, and the parameters of the pruned model counted by :mod:`nemo_reason.planner.params`.

Depth of a hybrid: which layers go is decided by the importance measured during calibration, so
the plan gives the range: ``params_after_min`` drops the ``k`` largest layers (by their parameter
count after width pruning), ``params_after_max`` the ``k`` smallest, each within the layer types the
model has (a prune step after it starts from the smaller). For GPT/MoE stacks (uniform layers) the
count is exact (the prune step checks that its pruned model has the planner's count). Pure Python,
no torch: the step's fields come from its typed config, the arithmetic from
:mod:`nemo_reason.compress.targets`.

Left out: a prune step whose input is changed by a step in between (e.g. a ``pretrain`` with model
overrides): the plan assumes the architecture the step's own config (with its overrides) describes.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from nemo_reason.compress.targets import current_sizes, layout_errors, pruned_config, sizes_for_budget
from nemo_reason.config.layers import ATTENTION, MAMBA, MLP, MOE, model_layers
from nemo_reason.planner.params import (attention_layer_params, mamba_layer_params, mlp_layer_params, moe_layer_params,
                                        param_count)


def _layer_params(m) -> Dict[str, int]:
    """Parameters of one layer of each type of ``m``."""
    out = {ATTENTION: attention_layer_params(m), MLP: mlp_layer_params(m)}
    if m.type == "hybrid":
        out[MAMBA] = mamba_layer_params(m)
    if m.is_moe:
        out[MOE] = moe_layer_params(m)
    return out


def _drop(pattern: List[str], k: int, order: List[str]) -> str:
    """``pattern`` with ``k`` layers removed, taking the types in ``order`` first (last ones first)."""
    layers = list(pattern)
    for sym in order:
        while k and sym in layers:
            i = len(layers) - 1 - layers[::-1].index(sym)
            del layers[i]
            k -= 1
    return "".join(layers)


def plan_prune(m, step, padded_vocab: int, tp: int = 1, pp: int = 1) -> dict:
    """The plan of one prune step (``step``: its typed config) on model ``m``."""
    from nemo_reason.compress.targets import TARGET_FIELDS

    targets = {k: getattr(step, k) for k in TARGET_FIELDS if getattr(step, k, None) is not None}
    before = param_count(m, padded_vocab)
    out = {"name": step.name or step.type, "targets": targets, "budget": step.params, "errors": [],
           "sizes_before": {k: v for k, v in current_sizes(m).items() if v is not None},
           "params_before": before, "hybrid_pattern_before": "".join(model_layers(m)) if m.type == "hybrid" else None}
    sizes = dict(targets)
    if step.params is not None:
        try:
            sizes = sizes_for_budget(m, padded_vocab, step.params, fixed=sizes, free=step.budget_fields,
                                     round_to=step.round_to, tp=tp)
        except ValueError as exc:
            out["errors"].append(str(exc))
            return out
    out["errors"] = layout_errors(m, sizes, tp=tp, pp=pp)
    if out["errors"]:
        return out
    cur = current_sizes(m)
    full = {**{k: v for k, v in cur.items() if v is not None}, **sizes}
    out["sizes"] = full
    depth = sizes.get("num_layers")
    if m.type == "hybrid" and depth is not None and depth < m.num_layers:
        wide = pruned_config(m, {**full, "num_layers": m.num_layers})  # widths pruned, all layers kept
        per = _layer_params(wide)
        pattern = model_layers(m)
        k = m.num_layers - depth
        kinds = sorted(set(pattern), key=lambda s: per[s])
        small = pruned_config(m, full, _drop(pattern, k, kinds[::-1]))  # largest layers dropped
        large = pruned_config(m, full, _drop(pattern, k, kinds))
        lo, hi = param_count(small, padded_vocab), param_count(large, padded_vocab)
        out.update(params_after_min=lo, params_after_max=hi, params_after=None,
                   layer_params={s: per[s] for s in kinds}, hybrid_pattern_min=small.hybrid_pattern,
                   hybrid_pattern_max=large.hybrid_pattern, model=small)
    else:
        new = pruned_config(m, full)
        n = param_count(new, padded_vocab)
        out.update(params_after=n, params_after_min=n, params_after_max=n, model=new)
    out["ratio_min"] = out["params_after_min"] / before
    out["ratio_max"] = out["params_after_max"] / before
    return out


def prune_plans(cfg, padded_vocab: int) -> List[dict]:
    """One :func:`plan_prune` per ``prune`` step of ``cfg.pipeline`` (chained); [] when there is none."""
    from nemo_reason.config.store import step_config
    from nemo_reason.stages.prune import later_layout  # the step's own rule (torch-free module)

    pipeline = list(cfg.pipeline or [])
    tp, pp = later_layout(cfg)
    plans: List[dict] = []
    prev: Optional[object] = None
    for step in pipeline:
        if getattr(step, "type", None) != "prune":
            continue
        m = step_config(cfg, step).model if prev is None else prev
        p = plan_prune(m, step, padded_vocab, tp, pp)
        prev = p.pop("model", None) or prev
        plans.append(p)
    return plans


def format_prune(p: dict) -> List[tuple]:
    """Rows (label, value) of one prune plan for the report's text."""
    def b(n):
        return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.3f} M"

    rows = []
    if p["errors"]:
        return [("cannot prune", "; ".join(p["errors"]))]
    changed = {k: v for k, v in p["sizes"].items() if p["sizes_before"].get(k) != v}
    rows.append(("shape", ", ".join(f"{k} {p['sizes_before'][k]}->{v}" for k, v in changed.items())))
    if p["budget"] is not None:
        rows.append(("from budget", f"params <= {p['budget']:.4g}"))
    if p["params_after"] is not None:
        after = f"{b(p['params_after'])} ({100 * p['ratio_min']:.1f}%)"
    else:
        after = (f"{b(p['params_after_min'])} - {b(p['params_after_max'])} ({100 * p['ratio_min']:.1f}-"
                 f"{100 * p['ratio_max']:.1f}%; which layers go is decided by the importance)")
    rows.append(("parameters", f"{b(p['params_before'])} -> {after}"))
    if p.get("layer_params"):
        names = {MAMBA: "Mamba-2", ATTENTION: "attention", MLP: "MLP", MOE: "MoE"}
        rows.append(("  per layer after widths", ", ".join(f"{names[s]} {b(n)}" for s, n in p["layer_params"].items())))
    return rows

