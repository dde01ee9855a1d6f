"""Models built from Megatron-Core: ``build_model(cfg, dims)`` returns the model chunks of this rank."""

from nemo_reason.models.gpt import build_model, transformer_config  # noqa: F401
