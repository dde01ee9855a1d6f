"""Layer allocation: which layer sits where in a model, and how many of each type it has.

A hybrid (Mamba-Transformer) pattern is one character per layer, with Megatron-Core's symbols
(``megatron/core/ssm/mamba_hybrid_layer_allocation.py``, ``Symbols``)::

    M  Mamba-2 mixer        *  self-attention        -  MLP        E  MoE

e.g. Nemotron-H 8B is ``M-M-M-M*-M-M-M-M-M*-...`` (52 layers). Instead of a pattern, a model may
give target ratios (``hybrid_attention_ratio``, ``hybrid_mlp_ratio``) and let Megatron spread the
layers evenly; with both, the pattern must hold the layer counts the ratios ask for.

:func:`allocate` follows Megatron's ``allocate_layers`` step for step (a unit test checks the two
agree); the model itself passes the pattern and ratios to Megatron's ``MambaStack``, which
allocates with its own function. :func:`layer_counts` is the one place that counts the layers of
any ``model.type`` (dense and MoE GPTs too: every layer is attention + MLP, every
``moe_layer_freq``-th MLP a MoE), for validation, the planner's parameters, FLOPs and memory.

Pure Python over a :class:`~nemo_reason.config.model.ModelConfig`: config validation, ``show`` and
``plan`` stay light (importing Megatron-Core takes ~10 s). MoE layers (``E``) take their settings
from ``model.num_moe_experts`` and the other ``moe_*`` fields.
"""

from __future__ import annotations

from typing import Dict, List, Optional

MAMBA, ATTENTION, MLP, MOE = "M", "*", "-", "E"
SYMBOLS = (MAMBA, ATTENTION, MLP, MOE)
NAMES = {MAMBA: "Mamba-2", ATTENTION: "attention", MLP: "MLP", MOE: "MoE"}


class PatternError(ValueError):
    """A hybrid pattern or ratio is invalid; the message says which and how to fix it."""


def _auto(num_layers: int, attention_ratio: float, mlp_ratio: float) -> List[str]:
    # 1. Attention layers evenly spaced, the stack starting and ending with Mamba.
    n_attn = round(num_layers * attention_ratio)
    n_mamba = num_layers - n_attn
    section = n_mamba / (n_attn + 1)
    layers = [MAMBA] * num_layers
    x = section
    for i in range(num_layers):
        if x < 0.5:
            layers[i] = ATTENTION
            x += section
        else:
            x -= 1
    # 2. MLP layers evenly among the remaining Mamba slots, right-justified.
    n_mlp = round(num_layers * mlp_ratio)
    if n_mlp > 0:
        per_mlp = (n_mamba - n_mlp) / n_mlp
        x = per_mlp
        for i in range(num_layers):
            if layers[i] == MAMBA:
                if x < 0.5:
                    layers[i] = MLP
                    x += per_mlp
                else:
                    x -= 1
    return layers


def counts(layers) -> Dict[str, int]:
    return {s: list(layers).count(s) for s in SYMBOLS}


def allocate(num_layers: int, attention_ratio: float = 0.0, mlp_ratio: float = 0.0,
             pattern: Optional[str] = None) -> List[str]:
    """The layer-type list Megatron's ``MambaStack`` will build, or :class:`PatternError`."""
    if num_layers <= 0:
        raise PatternError(f"model.num_layers={num_layers} must be positive")
    for name, r in (("hybrid_attention_ratio", attention_ratio), ("hybrid_mlp_ratio", mlp_ratio)):
        if not 0.0 <= r <= 1.0:
            raise PatternError(f"model.{name}={r} must be between 0 and 1")
    if attention_ratio + mlp_ratio > 1.0:
        raise PatternError(f"model.hybrid_attention_ratio + model.hybrid_mlp_ratio = "
                           f"{attention_ratio + mlp_ratio} exceeds 1")
    auto = _auto(num_layers, attention_ratio, mlp_ratio)
    if pattern is None:
        return auto
    bad = sorted({c for c in pattern if c not in SYMBOLS})
    if bad:
        raise PatternError(f"model.hybrid_pattern={pattern!r}: {', '.join(repr(c) for c in bad)} is not a layer "
                           f"symbol; use M (Mamba-2), * (attention), - (MLP), E (MoE)")
    if len(pattern) != num_layers:
        raise PatternError(f"model.hybrid_pattern has {len(pattern)} layers but model.num_layers={num_layers}; "
                           f"set model.num_layers={len(pattern)}")
    layers = list(pattern)
    if (attention_ratio > 0 or mlp_ratio > 0) and counts(layers) != counts(auto):
        want, got = counts(auto), counts(layers)
        raise PatternError(
            f"model.hybrid_pattern holds {got[ATTENTION]} attention / {got[MLP]} MLP layers but the ratios ask for "
            f"{want[ATTENTION]} / {want[MLP]} ({''.join(auto)}); set the ratios to 0 to use the pattern alone")
    return layers


def describe(layers) -> str:
    c = counts(layers)
    parts = [f"{c[s]} {NAMES[s]}" for s in SYMBOLS if c[s]]
    return f"{''.join(layers)} ({', '.join(parts)})"


def model_layers(m) -> List[str]:
    """The layer symbols of a hybrid ``ModelConfig`` (its pattern or ratios), or :class:`PatternError`."""
    return allocate(m.num_layers, m.hybrid_attention_ratio, m.hybrid_mlp_ratio, m.hybrid_pattern)


def layer_counts(m) -> Dict[str, int]:
    """Layers per type of any model, keyed by symbol: for a hybrid its allocation; for gpt/moe
    ``num_layers`` attention layers and as many MLPs, of which every ``moe_layer_freq``-th (0, f, 2f,
    ...) is MoE when the model has experts (Megatron's integer ``moe_layer_freq``)."""
    if m.type == "hybrid":
        return counts(model_layers(m))
    n_moe = sum(1 for i in range(m.num_layers) if i % m.moe_layer_freq == 0) if m.is_moe else 0
    return {MAMBA: 0, ATTENTION: m.num_layers, MLP: m.num_layers - n_moe, MOE: n_moe}
