"""Megatron's ``MambaStack`` with a final norm chosen by the spec.

``megatron/core/ssm/mamba_block.py:166`` builds the stack's final norm as ``TENorm`` whatever the
spec says, and ``TENorm`` raises without Transformer Engine. This subclass builds the stack with
``post_layer_norm=False`` (so Megatron skips that line) and then adds the same ``final_norm``
attribute from the spec's ``final_norm`` class (default ``WrappedTorchNorm``: torch's LayerNorm /
RMSNorm after ``config.normalization``). Megatron's own ``forward`` applies it, and the state-dict
key is ``decoder.final_norm.weight`` as with ``TENorm``, so checkpoints do not notice.
"""

from __future__ import annotations

from megatron.core.ssm.mamba_block import MambaStack as _MegatronMambaStack
from megatron.core.transformer.spec_utils import build_module
from megatron.core.transformer.torch_norm import WrappedTorchNorm


class MambaStack(_MegatronMambaStack):
    def __init__(self, config, submodules, *args, post_layer_norm: bool = True, final_norm=WrappedTorchNorm,
                 **kwargs):
        super().__init__(config, submodules, *args, post_layer_norm=False, **kwargs)
        self.post_layer_norm = post_layer_norm
        if self.post_process and post_layer_norm:
            self.final_norm = build_module(final_norm, config=config, hidden_size=config.hidden_size,
                                           eps=config.layernorm_epsilon)
