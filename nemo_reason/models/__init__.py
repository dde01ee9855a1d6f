"""Models built from Megatron-Core: ``build_model(cfg, vocab_size)`` returns the model chunks of this rank.

``model.type`` picks the builder from :data:`BUILDERS` (module path of a ``build_model`` function);
builders are imported on first use, so the light modules here (``pattern``) can be imported by the
config code without loading Megatron-Core.
"""

from __future__ import annotations

import importlib

# model.type -> module holding build_model(cfg, vocab_size, dims)
BUILDERS = {
    "gpt": "nemo_reason.models.gpt",        # dense GPTModel (Nemotron-4 style)
    "moe": "nemo_reason.models.gpt",        # GPTModel with MoE layers (Mixtral, Qwen2-MoE)
    "hybrid": "nemo_reason.models.hybrid",  # MambaModel: Mamba-2 / attention / MLP pattern (Nemotron-H)
}


def build_model(cfg, vocab_size: int, dims=None):
    """Model chunks of this rank (one per virtual pipeline stage), on this rank's device; ``dims``
    is the step's resolved layout (``ctx.dims``), else ``cfg.parallel`` is read."""
    if cfg.model.type not in BUILDERS:
        raise ValueError(f"model.type={cfg.model.type!r} has no builder; known: {', '.join(BUILDERS)}")
    return importlib.import_module(BUILDERS[cfg.model.type]).build_model(cfg, vocab_size, dims)


def __getattr__(name):
    if name == "transformer_config":  # kept for callers of the former eager import
        from nemo_reason.models.gpt import transformer_config

        return transformer_config
    raise AttributeError(name)
