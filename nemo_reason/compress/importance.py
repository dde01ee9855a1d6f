"""Importance report of a pruning: per layer, from modelopt's calibration statistics and a depth probe.

modelopt's ``mcore_minitron`` hooks record, over the calibration forwards, ``sum_b (mean_s |a|)^2``
for each activation ``a`` it ranks by (mcore_minitron.py ``_register_*_importance``); the importance
of one channel is the square root (an L2 norm over the batch of sequence-mean magnitudes):

    embedding channel   the layer-norm outputs of every layer, summed over layers       [hidden]
    MLP neuron          linear_fc2's input                                               [ffn]
    attention head      L2 over the head's kv_channels of linear_proj's input            [heads]
    Mamba head          L2 over the head's channels of x (in_proj's second d_inner rows) [mamba heads]
    Mamba head channel  L2 over heads of the same                                        [mamba head dim]
    MoE expert neuron   each routed expert's linear_fc2 input (kept: within kept experts) [experts x moe ffn]
    shared-expert neuron  the shared expert's linear_fc2 input                           [shared ffn]

A routed expert's importance is modelopt's as well (``_register_sequential_mlp_importance``): the
mean over the calibration tokens routed to it of the L2 norm of its output (the sum of those norms
over the token count), with the token counts (the router's load) reported beside it; modelopt keeps
the experts of highest importance in each layer, and the report names them (``kept_experts``, the
experts' numbers before pruning).

Layer importance for depth pruning is modelopt's ``1 - cos(layer input, layer output)`` (summed over
calibration batches; what it drops by) and, from :func:`layer_drop_losses`, the LM-loss increase on
the calibration batches when that one layer is removed (the Minitron paper's other criterion).

:func:`build_report` gathers both per layer with what the pruning kept ("kept share": the fraction
of a layer's importance mass that the kept neurons/heads hold); :func:`format_table` prints it;
:func:`save_plot` draws layer scores and kept shares when matplotlib imports (else it does nothing).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch


def _vec(t) -> torch.Tensor:
    return t.detach().float().cpu().clamp_min(0).sqrt()


def _share(values: torch.Tensor, keep_idx: torch.Tensor) -> float:
    total = float(values.sum())
    return float(values[keep_idx].sum()) / total if total > 0 else 1.0


def _topk_grouped(values: torch.Tensor, groups: int, keep: int) -> torch.Tensor:
    """Indices of the top ``keep // groups`` entries within each of ``groups`` equal groups."""
    per = values.numel() // groups
    k = max(1, keep // groups)
    idx = values.view(groups, per).argsort(dim=1, descending=True)[:, :k]
    return (idx + torch.arange(groups)[:, None] * per).flatten()


def _summary(values: torch.Tensor, keep_idx: Optional[torch.Tensor]) -> dict:
    out = {"size": int(values.numel()), "mean": float(values.mean()), "min": float(values.min()),
           "max": float(values.max())}
    if keep_idx is not None:
        out.update(kept=int(keep_idx.numel()), kept_share=_share(values, keep_idx))
    return out


def layer_drop_losses(model, batches: List[dict], loss_of: Callable) -> Dict[str, object]:
    """``{"base": loss, "drop": {layer_number: loss without that layer}}`` on ``batches``;
    ``loss_of(model, batch) -> float``. The layers are put back afterwards."""
    layers = model.decoder.layers
    with torch.no_grad():
        base = sum(loss_of(model, b) for b in batches) / len(batches)
        drop = {}
        try:
            for i in range(len(layers)):
                model.decoder.layers = torch.nn.ModuleList([l for j, l in enumerate(layers) if j != i])
                drop[i + 1] = sum(loss_of(model, b) for b in batches) / len(batches)
        finally:
            model.decoder.layers = layers
    return {"base": base, "drop": drop}


def build_report(m, sizes: Dict[str, int], importance, layer_types: List[str],
                 drop_losses: Optional[dict] = None) -> dict:
    """Per-layer and model-level importance summaries (plain JSON values).

    ``m``: the model config before pruning; ``sizes``: the pruning targets (name -> size);
    ``importance``: :class:`nemo_reason.compress.minitron.Importance`; ``layer_types``: one symbol
    per layer (``M`` Mamba, ``*`` attention, ``-`` MLP, ``E`` MoE, ``T`` attention+MLP)."""
    acts = importance.activations
    groups = m.num_query_groups or m.num_attention_heads
    kv = m.kv_channels or m.hidden_size // m.num_attention_heads
    rows = []
    for i, sym in enumerate(layer_types):
        n = i + 1
        row = {"layer": n, "type": sym, "score_cosine": importance.layer_scores.get(n),
               "kept": n in importance.kept_layers}
        if drop_losses:
            row["loss_if_dropped"] = drop_losses["drop"].get(n)
            row["loss_increase"] = (drop_losses["drop"][n] - drop_losses["base"]) if n in drop_losses["drop"] else None
        mlp = acts.get(f"decoder.layers.{i}.mlp")
        if isinstance(mlp, torch.Tensor):
            v = _vec(mlp)
            k = sizes.get("ffn_hidden_size")
            row["mlp_neurons"] = _summary(v, v.argsort(descending=True)[:k] if k else None)
        att = acts.get(f"decoder.layers.{i}.self_attention")
        if isinstance(att, torch.Tensor):
            heads = torch.linalg.vector_norm(_vec(att).view(-1, kv), dim=1)
            k = sizes.get("num_attention_heads")
            keep = _topk_grouped(heads, groups, k) if k else None
            row["attention_heads"] = {**_summary(heads, keep), "values": heads.tolist(), "query_groups": groups}
        mix = acts.get(f"decoder.layers.{i}.mixer")
        if isinstance(mix, torch.Tensor):
            H, P = m.mamba_heads, m.mamba_head_dim
            x = _vec(mix)[H * P:2 * H * P].view(H, P)
            heads, chans = torch.linalg.vector_norm(x, dim=1), torch.linalg.vector_norm(x, dim=0)
            kh, kp = sizes.get("mamba_num_heads"), sizes.get("mamba_head_dim")
            row["mamba_heads"] = {**_summary(heads, _topk_grouped(heads, m.mamba_num_groups, kh) if kh else None),
                                  "values": heads.tolist(), "groups": m.mamba_num_groups}
            row["mamba_head_dim"] = _summary(chans, chans.argsort(descending=True)[:kp] if kp else None)
        row.update(_moe_rows(acts, f"decoder.layers.{i}.mlp", sizes))
        rows.append(row)
    report = {"layers": rows, "kept_layers": importance.kept_layers, "targets": dict(sizes)}
    emb = acts.get("")
    if isinstance(emb, dict) and emb:
        v = torch.stack([_vec(t) for t in emb.values()]).sum(0)
        k = sizes.get("hidden_size")
        report["embedding_channels"] = {**_summary(v, v.argsort(descending=True)[:k] if k else None),
                                        "values": v.tolist()}
    if drop_losses:
        report["calibration_loss"] = drop_losses["base"]
    return report


def expert_importance(stats: dict) -> torch.Tensor:
    """modelopt's importance of each routed expert from its ``SequentialMLP`` statistics
    (``expert_l2_scores``: summed output L2 norms, ``expert_sample_counts``: routed tokens)."""
    return stats["expert_l2_scores"].float() / (stats["expert_sample_counts"].float() + 1e-8)


def _moe_rows(acts: dict, prefix: str, sizes: Dict[str, int]) -> dict:
    """The MoE parts of one layer's row: routed experts, their neurons, the shared expert's neurons."""
    out = {}
    stats = acts.get(f"{prefix}.experts")
    if isinstance(stats, dict) and "expert_l2_scores" in stats:
        score = expert_importance(stats)
        k = sizes.get("num_moe_experts")
        keep = score.argsort(descending=True)[:k] if k else None
        out["moe_experts"] = {**_summary(score, keep), "values": score.tolist(),
                              "tokens": stats["expert_sample_counts"].float().tolist()}
        if keep is not None:
            out["moe_experts"]["kept_experts"] = sorted(int(e) for e in keep)
        local = [acts.get(f"{prefix}.experts.local_experts.{e}") for e in range(score.numel())]
        if all(isinstance(t, torch.Tensor) for t in local):
            v = torch.cat([_vec(t) for t in local])
            k = sizes.get("moe_ffn_hidden_size")
            idx = None
            if k or keep is not None:  # the kept experts' top-k neurons (all of them without a target)
                per = local[0].numel()
                top = _topk_grouped(v, len(local), (k or per) * len(local)).view(len(local), -1)
                experts = keep if keep is not None else torch.arange(len(local))
                idx = top[experts.sort().values].flatten()
            out["expert_neurons"] = _summary(v, idx)
    shared = acts.get(f"{prefix}.shared_experts")
    if isinstance(shared, torch.Tensor):
        v = _vec(shared)
        k = sizes.get("moe_shared_expert_intermediate_size")
        out["shared_expert_neurons"] = _summary(v, v.argsort(descending=True)[:k] if k else None)
    return out


def _fmt(x, spec=".4f") -> str:
    return "-" if x is None else format(x, spec)


WIDTHS = (("mlp_neurons", "MLP neurons"), ("attention_heads", "attn heads"), ("mamba_heads", "Mamba heads"),
          ("mamba_head_dim", "Mamba head dim"), ("moe_experts", "experts"), ("expert_neurons", "expert neurons"),
          ("shared_expert_neurons", "shared-expert neurons"))


def _width(row: dict) -> str:
    parts = []
    for key, name in WIDTHS:
        s = row.get(key)
        if s is None:
            continue
        kept = f"->{s['kept']} keeps {100 * s['kept_share']:.0f}%" if "kept" in s else ""
        if "kept_experts" in s:
            kept += f" {s['kept_experts']}"
        parts.append(f"{name} {s['size']}{kept} (mean {s['mean']:.3g})")
    return "; ".join(parts)


def format_table(report: dict) -> str:
    """The per-layer importance table (text, one line per layer)."""
    lines = [f"{'layer':>5} {'type':>4} {'1-cos':>8} {'dloss':>8} {'kept':>4}  width importance"]
    for r in report["layers"]:
        lines.append(f"{r['layer']:>5} {r['type']:>4} {_fmt(r['score_cosine']):>8} {_fmt(r.get('loss_increase')):>8} "
                     f"{'yes' if r['kept'] else 'no':>4}  {_width(r)}")
    e = report.get("embedding_channels")
    if e:
        kept = f" -> {e['kept']} keep {100 * e['kept_share']:.0f}% of the importance" if "kept" in e else ""
        lines.append(f"embedding channels: {e['size']}{kept} (mean {e['mean']:.3g}, min {e['min']:.3g}, "
                     f"max {e['max']:.3g})")
    return "\n".join(lines)


def save_plot(report: dict, path) -> bool:
    """Layer importance (1-cos, LM-loss increase) and kept shares per layer as a PNG; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = report["layers"]
    xs = [r["layer"] for r in rows]
    moe = [r for r in rows if "moe_experts" in r]
    fig, axes = plt.subplots(1, 3 if moe else 2, figsize=(15 if moe else 10, 3.5))
    axes[0].bar([x - 0.2 for x in xs], [r["score_cosine"] or 0 for r in rows], width=0.4, label="1 - cos")
    axes[0].bar([x + 0.2 for x in xs], [r.get("loss_increase") or 0 for r in rows], width=0.4,
                label="LM-loss increase if dropped")
    axes[0].set_xlabel("layer")
    axes[0].set_title("layer importance")
    axes[0].legend()
    for key, _ in WIDTHS:
        pts = [(r["layer"], r[key]["kept_share"]) for r in rows if key in r and "kept_share" in r[key]]
        if pts:
            axes[1].plot(*zip(*pts), "o-", label=key)
    axes[1].set_ylim(0, 1.05)
    axes[1].set_xlabel("layer")
    axes[1].set_title("share of importance kept")
    axes[1].legend()
    if moe:  # each expert's importance per layer; filled: kept
        for r in moe:
            e = r["moe_experts"]
            kept = set(e.get("kept_experts", range(len(e["values"]))))
            for j, v in enumerate(e["values"]):
                axes[2].scatter(r["layer"], v, marker="o", s=30, facecolors="C0" if j in kept else "none",
                                edgecolors="C0")
                axes[2].annotate(str(j), (r["layer"], v), textcoords="offset points", xytext=(4, 0), fontsize=7)
        axes[2].set_xlabel("layer")
        axes[2].set_title("MoE expert importance (filled: kept)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
