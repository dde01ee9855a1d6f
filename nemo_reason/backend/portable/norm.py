"""Portable layer norm with Megatron's norm interface, sequence parallelism included.

Megatron-Core's ``WrappedTorchNorm`` (the local spec's norm without apex) builds
``torch.nn.LayerNorm``/``RMSNorm`` but asserts ``sequence_parallel`` is off
(``transformer/torch_norm.py:32``); apex's ``FusedLayerNorm`` and TE's norms support it. All a
norm needs under sequence parallelism is to mark its parameters ``sequence_parallel``: each
tensor-parallel rank then sees a different slice of the sequence, and Megatron's
``finalize_model_grads`` all-reduces the gradients of marked parameters over the
tensor-parallel group. :class:`PortableNorm` does exactly that and otherwise builds the same torch
module, so parameters, state-dict keys and arithmetic are those of ``WrappedTorchNorm``.
"""

from __future__ import annotations

import torch


class PortableNorm:
    """``LayerNorm`` or ``RMSNorm`` (per ``config.normalization``) whose parameters carry
    ``sequence_parallel``; same constructor as Megatron's norms."""

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, persist_layer_norm: bool = False,
                zero_centered_gamma: bool = False, normalization: str = "LayerNorm"):
        kinds = {"LayerNorm": torch.nn.LayerNorm, "RMSNorm": torch.nn.RMSNorm}
        if config.layernorm_zero_centered_gamma:
            kinds = {"LayerNorm": ZeroCenteredLayerNorm, "RMSNorm": ZeroCenteredRMSNorm}
        if config.normalization not in kinds:
            raise NotImplementedError(f"normalization={config.normalization!r}: use LayerNorm or RMSNorm")
        norm = kinds[config.normalization](normalized_shape=hidden_size, eps=eps)
        for p in norm.parameters():
            setattr(p, "sequence_parallel", config.sequence_parallel)
        return norm


class ZeroCenteredLayerNorm(torch.nn.LayerNorm):
    """LayerNorm whose stored weight is gamma - 1 (TE's ``zero_centered_gamma``, Nemotron-4's
    LayerNorm1P): initialised to zero, applied as ``weight + 1``. Same parameters and keys."""

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.elementwise_affine:
            torch.nn.init.zeros_(self.weight)

    def forward(self, x):
        return torch.nn.functional.layer_norm(x, self.normalized_shape, self.weight + 1, self.bias, self.eps)


class ZeroCenteredRMSNorm(torch.nn.RMSNorm):
    """RMSNorm whose stored weight is gamma - 1 (TE's ``zero_centered_gamma``)."""

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.elementwise_affine:
            torch.nn.init.zeros_(self.weight)

    def forward(self, x):
        return torch.nn.functional.rms_norm(x, self.normalized_shape, self.weight + 1, self.eps)
