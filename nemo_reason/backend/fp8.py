"""FP8 training through Transformer Engine, as Megatron-Core runs it.

Megatron-Core does the fp8 work itself once its ``TransformerConfig`` carries ``fp8`` (the format)
and ``fp8_recipe``: ``fp8_utils.get_fp8_recipe`` builds TE's recipe object (``DelayedScaling``,
``Float8CurrentScaling`` for "tensorwise", ``Float8BlockScaling`` for "blockwise",
``MXFP8BlockScaling`` for "mxfp8") and ``get_fp8_context`` wraps every layer, leaving the first
and last ``num_layers_at_{start,end}_in_bf16`` layers out when ``first_last_layers_bf16`` is set
(Nemotron-H keeps them in bf16). ``fp8_param`` keeps weights as TE ``Float8Tensor``s so the
distributed optimizer all-gathers them in fp8 (Megatron-LM ``--fp8-param-gather``).

This module only

- checks that this machine can train in fp8 (:func:`check_fp8_hardware`, called by the preflight,
  :mod:`nemo_reason.preflight`, where the job runs): CUDA, Transformer Engine, the TE version and
  the GPU generation each recipe needs. The shape rules (dimensions per TP rank multiple of 16,
  bf16 layers per stage) are configuration: rule ``fp8`` of :mod:`nemo_reason.config.layout`;
- maps ``trainer.fp8_*`` onto Megatron's field names (:func:`fp8_transformer_kwargs`).

Left out: fp4, custom quantizer factories, fp8 attention (``fp8_dot_product_attention``).
"""

from __future__ import annotations

from types import SimpleNamespace

from nemo_reason.config.errors import ConfigError

# Recipe -> (minimum TE version, minimum compute capability, what it is)
_RECIPES = {
    "delayed": ("1.0", (8, 9), "delayed scaling (amax history)"),
    "tensorwise": ("2.2.0", (8, 9), "per-tensor current scaling"),
    "blockwise": ("2.3.0", (9, 0), "1x128/128x128 block scaling"),
    "mxfp8": ("2.1.0", (10, 0), "MXFP8 block scaling"),
}


def check_fp8(cfg) -> None:
    """Raise :class:`ConfigError` naming the problem and the fix when ``cfg`` cannot train in fp8 here
    (its fp8 shape rules, then this machine)."""
    _check_config_rules(cfg.trainer, cfg.model, cfg.parallel)
    check_fp8_hardware(cfg.trainer.fp8_recipe)


def _check_config_rules(t, m, p) -> None:
    """The first broken ``fp8`` rule of the layout table (kept for callers of the former check)."""
    from nemo_reason.config.layout import RULES, layout_of

    cfg = SimpleNamespace(trainer=t, model=m, parallel=p, launcher=SimpleNamespace(world_size=1))
    lay = layout_of(cfg, 1)
    for rule in RULES:
        msg = rule.check(cfg, lay) if rule.name == "fp8" else None
        if msg:
            raise ConfigError(msg)


def check_fp8_hardware(recipe: str) -> None:
    """ConfigError unless this machine has CUDA, Transformer Engine (at the recipe's version) and a
    GPU generation the fp8 recipe runs on."""
    _check_hardware(recipe)


def _check_hardware(recipe: str) -> None:
    from nemo_reason.backend import cuda_available, te_importable

    if not cuda_available():
        raise ConfigError(
            "trainer.precision=fp8 needs an NVIDIA GPU (Hopper or newer) and Transformer Engine; "
            "this machine has no CUDA device. Use trainer.precision=bf16 (or fp32) here."
        )
    if not te_importable():
        raise ConfigError(
            "trainer.precision=fp8 needs Transformer Engine: install the gpu extra "
            "(pip install -e '.[gpu]') or use trainer.precision=bf16"
        )
    import torch
    from megatron.core.utils import is_te_min_version

    min_te, min_cc, what = _RECIPES[recipe]
    if not is_te_min_version(min_te):
        raise ConfigError(f"trainer.fp8_recipe={recipe} ({what}) needs Transformer Engine >= {min_te}")
    cc = torch.cuda.get_device_capability()
    if cc < min_cc:
        raise ConfigError(
            f"trainer.fp8_recipe={recipe} ({what}) needs compute capability {min_cc[0]}.{min_cc[1]} or newer; "
            f"this GPU has {cc[0]}.{cc[1]}"
        )


def fp8_transformer_kwargs(trainer) -> dict:
    """``TransformerConfig`` fields for ``trainer.fp8_*`` (empty unless precision is fp8)."""
    if trainer.precision != "fp8":
        return {}
    return {
        "fp8": trainer.fp8_format,
        "fp8_recipe": trainer.fp8_recipe,
        "fp8_amax_history_len": trainer.fp8_amax_history_len,
        "fp8_amax_compute_algo": trainer.fp8_amax_compute_algo,
        "fp8_param": trainer.fp8_param_gather,
        "first_last_layers_bf16": trainer.fp8_first_last_layers_bf16,
        "num_layers_at_start_in_bf16": trainer.fp8_num_layers_at_start_in_bf16,
        "num_layers_at_end_in_bf16": trainer.fp8_num_layers_at_end_in_bf16,
    }
