"""Minitron width/depth pruning of a Megatron model with nvidia-modelopt's ``mcore_minitron`` mode.

:func:`apply_minitron` prunes a bare ``GPTModel``/``MambaModel`` in place to explicit sizes
(modelopt's ``export_config``): calibration forwards (the ``forward_loop``, under ``no_grad``) feed
modelopt's activation hooks, which rank embedding channels (layer-norm outputs), MLP neurons
(``linear_fc2`` inputs), attention heads (``linear_proj`` inputs, ranked within each query group),
Mamba heads and head channels (the ``x`` part of ``in_proj``'s output, heads ranked within each B/C
group), routed experts (the L2 norm of each expert's outputs over the tokens routed to it; the
router's rows follow the kept experts) and layers (``1 - cos(input, output)`` of each layer); it
then sorts every weight by that importance, keeps the top of each and drops the lowest-ranked
layers. The divisors modelopt limits its choices with are set from the targets themselves (each
target is a legal choice), so the default divisors' trap (256/512 on small models: nothing pruned,
config already changed) cannot bite; the prune step checks anyway (:func:`shape_mismatches`). Dense
MLPs, routed experts and the shared expert share one FFN divisor: the greatest common divisor of
their targets.

What modelopt computed is returned as :class:`Importance` (raw activation statistics, layer scores,
the kept layers) for :mod:`.importance` to summarise. modelopt's own output goes to ``log_path``.

The model must hold modules modelopt knows: on a CPU, :func:`nemo_reason.backend.modelopt_cpu.prepare_for_pruning`
is called first. Left out: TP/CP/EP > 1 (modelopt asserts TP=1), modelopt's ``params`` search
(it needs a score function; :func:`nemo_reason.compress.targets.sizes_for_budget` turns a budget
into sizes instead).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch


@dataclass
class Importance:
    activations: Dict[str, object]          # module name (before pruning) -> modelopt's squared-sum statistics
    layer_scores: Dict[int, float]          # layer number (1-based) -> 1 - cos(in, out), higher = more important
    kept_layers: List[int]                  # 1-based layer numbers kept, in model order
    hybrid_pattern: Optional[str] = None    # the pruned hybrid's pattern
    extra: dict = field(default_factory=dict)


def divisors_for(export_config: Dict[str, int]) -> Dict[str, int]:
    """modelopt's divisor keyword arguments such that every target is one of its choices."""
    names = {"hidden_size": "hidden_size_divisor", "ffn_hidden_size": "ffn_hidden_size_divisor",
             "mamba_head_dim": "mamba_head_dim_divisor", "num_moe_experts": "num_moe_experts_divisor",
             "num_layers": "num_layers_divisor"}
    out = {v: 1 for v in names.values()}
    for k, v in export_config.items():
        if k in names:
            out[names[k]] = int(v)
    # Dense MLPs, routed experts and the shared expert share modelopt's one FFN divisor.
    ffn = [int(export_config[k]) for k in ("ffn_hidden_size", "moe_ffn_hidden_size",
                                             "moe_shared_expert_intermediate_size") if k in export_config]
    if ffn:
        out["ffn_hidden_size_divisor"] = math.gcd(*ffn)
    out["num_layers_divisor"] = 1
    return out


def apply_minitron(model, export_config: Dict[str, int], forward_loop: Callable, work_dir: Path,
                   log_path: Optional[Path] = None) -> Importance:
    """Prune ``model`` in place to ``export_config`` (target name -> size); returns the importance.

    ``forward_loop(model)`` runs the calibration forwards. ``work_dir`` holds modelopt's score file
    (removed first: a stale one would be reused for another model)."""
    from nemo_reason.backend.modelopt_cpu import prepare_for_pruning

    prepare_for_pruning(model)
    import modelopt.torch.prune as mtp
    from modelopt.torch.prune.plugins.mcore_minitron import get_mcore_minitron_config

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    scores = work_dir / "minitron_scores.pth"
    # modelopt writes <stem><rank><ext> when torch.distributed is up.
    for old in work_dir.glob("minitron_scores*.pth"):
        old.unlink()
    layers_before = len(model.decoder.layers)
    pattern = getattr(model, "hybrid_override_pattern", None)
    config = get_mcore_minitron_config(**divisors_for(export_config))
    log = open(log_path, "a") if log_path else open("/dev/null", "w")  # noqa: SIM115
    with log, contextlib.redirect_stdout(log):
        mtp.prune(model, mode=[("mcore_minitron", config)], constraints={"export_config": dict(export_config)},
                  dummy_input=None, config={"forward_loop": forward_loop, "scores_path": str(scores)})
    files = sorted(work_dir.glob("minitron_scores*.pth"))
    state = torch.load(files[0], weights_only=False) if files else {}
    layer_scores = {int(k): float(v) for k, v in (state.get("layer_scores") or {}).items()}
    ranked = state.get("sorted_layers") or sorted(layer_scores, key=lambda k: -layer_scores[k])
    n_keep = len(model.decoder.layers)
    kept = sorted(ranked[:n_keep]) if n_keep < layers_before else list(range(1, layers_before + 1))
    new_pattern = None
    if pattern is not None:
        new_pattern = getattr(model, "hybrid_override_pattern", None) or "".join(pattern[i - 1] for i in kept)
    acts = (state.get("activations_per_rank") or [{}])[0]
    return Importance(activations=acts, layer_scores=layer_scores, kept_layers=kept, hybrid_pattern=new_pattern)


def shape_mismatches(pruned_model, rebuilt_model) -> List[str]:
    """``name: pruned shape vs config shape`` for every weight whose shape differs (or is missing)."""
    a = {k: tuple(v.shape) for k, v in pruned_model.state_dict().items() if isinstance(v, torch.Tensor)}
    b = {k: tuple(v.shape) for k, v in rebuilt_model.state_dict().items() if isinstance(v, torch.Tensor)}
    out = [f"{k}: pruned {a.get(k)} vs config {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return out


def copy_weights(pruned_model, rebuilt_model) -> None:
    """The pruned weights into the model built at the pruned config (strict: every key, every shape)."""
    sd = {k: v for k, v in pruned_model.state_dict().items()}
    with torch.no_grad():
        rebuilt_model.load_state_dict(sd, strict=True)


def max_logit_diff(model_a, model_b, batches) -> float:
    """Largest absolute logit difference of two models over ``batches`` (dicts with tokens, position_ids)."""
    worst = 0.0
    with torch.no_grad():
        for b in batches:
            la = model_a(b["tokens"], b["position_ids"], None)
            lb = model_b(b["tokens"], b["position_ids"], None)
            worst = max(worst, float((la.float() - lb.float()).abs().max()))
    return worst if math.isfinite(worst) else float("inf")
