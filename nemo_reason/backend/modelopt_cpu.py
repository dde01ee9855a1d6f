"""What nvidia-modelopt's Minitron pruning (``mcore_minitron``, 0.43) needs to run on the portable modules.

modelopt turns a Megatron ``GPTModel``/``MambaModel`` into a *dynamic* module by looking each
submodule's class up in its registry (``modelopt.torch.nas.registry.DMRegistry``). On a CUDA machine
with Transformer Engine and mamba-ssm every class the model holds is registered by modelopt itself.
On the CPU the model holds the portable modules (``backend/portable``), and modelopt refuses or,
worse, silently prunes nothing (notes/post-training-on-cpu.md). :func:`install_modelopt_cpu` fills
the gaps through modelopt's own registries, without changing any modelopt code:

1. ``nn.LayerNorm`` / ``nn.RMSNorm`` (what the local spec's ``PortableNorm`` builds): modelopt's
   ``_DynamicLayerNorm`` extended so that its ``_setup`` also accepts the shared ``num_features``
   hparam that Megatron layers pass (as modelopt's ``_DynamicFusedLayerNorm`` does for apex norms);
   without ``num_features`` it behaves as modelopt's own.
2. The portable linears and self-attention (subclasses with their own ``forward``, so modelopt's
   "same forward" subclass match does not find them) to modelopt's ``_DynamicColumnParallelLinear``,
   ``_DynamicRowParallelLinear``, ``_DynamicSelfAttention``.
3. Without mamba-ssm (modelopt registers the Mamba classes only after ``import mamba_ssm``):
   ``MambaModel`` to ``_DynamicMCoreLanguageModel`` (and to modelopt's ``SUPPORTED_MODELS``),
   ``MambaLayer`` to ``_DynamicMambaLayer``, the portable mixer to ``_DynamicMambaMixer`` (plus its
   ``dims`` as a dynamic attribute, so the pruned mixer runs in place at its new sizes), the
   portable gated RMSNorm to ``_DynamicExtendedRMSNorm``; and ``MCoreMinitronConfig`` rebuilt with
   modelopt's own ``get_kwargs_for_create_model_with_rules`` so it carries the ``MambaModel`` rule:
   without it the hybrid's ``hidden_size`` and ``num_layers`` stay frozen and pruning them is
   silently skipped.

:func:`use_dot_product_attention` swaps the SDPA core attention of a model (a copy being pruned)
for Megatron's ``DotProductAttention``, the core attention modelopt knows besides TE's; it runs on
the CPU through :mod:`.cpu_compat`. On CUDA with TE and mamba-ssm none of this is needed and
nothing is installed: modelopt's own path is used.

:func:`prepare_for_pruning` does both for a model about to be pruned.

Left out: modelopt's other modes (quantization, sparsity); TP > 1 pruning (modelopt asserts TP=1).
"""

from __future__ import annotations

import threading

_LOCK = threading.Lock()
_INSTALLED = False


def modelopt_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("modelopt") is not None


def install_modelopt_cpu() -> None:
    """Register the portable modules with modelopt's dynamic-module registry (idempotent)."""
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return
        _register_norms()
        _register_portable_layers()
        _register_mamba()
        _INSTALLED = True


def _register_once(registry, nn_cls, key: str, dm_cls) -> None:
    if nn_cls not in registry._registry:
        registry.register({nn_cls: key})(dm_cls)


def _register_norms() -> None:
    import torch.nn as nn
    from modelopt.torch.nas.modules.norm import _DynamicLayerNorm
    from modelopt.torch.nas.registry import DMRegistry

    current = DMRegistry._registry.get(nn.LayerNorm)
    if current is not None and getattr(current, "_nemo_reason", False):
        return

    class _DynamicTorchNorm(_DynamicLayerNorm):
        """``nn.LayerNorm``/``nn.RMSNorm`` with dynamic features; ``num_features`` shared when given."""

        _nemo_reason = True

        def _setup(self, *, num_features=None):
            if num_features is None:
                if not hasattr(self, "bias"):  # nn.RMSNorm has no bias attribute
                    self.register_parameter("bias", None)
                return super()._setup()
            self._register_hparam("num_features", num_features)
            self._register_dynamic_attribute("weight", self._cut_to_active_features)
            if getattr(self, "bias", None) is not None:
                self._register_dynamic_attribute("bias", self._cut_to_active_features)
            self._register_dynamic_attribute("normalized_shape", self._get_normalized_shape)

    if current is not None:
        DMRegistry.unregister(nn.LayerNorm)
    DMRegistry.register({nn.LayerNorm: "nn.LayerNorm"})(_DynamicTorchNorm)
    _register_once(DMRegistry, nn.RMSNorm, "nn.RMSNorm", _DynamicTorchNorm)


def _register_portable_layers() -> None:
    from modelopt.torch.nas.plugins import megatron as mnas
    from modelopt.torch.nas.registry import DMRegistry

    from nemo_reason.backend.portable import linear, self_attention

    _register_once(DMRegistry, linear.PortableColumnParallelLinear,
                   "nemo_reason.backend.portable.linear.PortableColumnParallelLinear",
                   mnas._DynamicColumnParallelLinear)
    _register_once(DMRegistry, linear.PortableRowParallelLinear,
                   "nemo_reason.backend.portable.linear.PortableRowParallelLinear", mnas._DynamicRowParallelLinear)
    if self_attention.PortableSelfAttention.forward is not mnas.SelfAttention.forward:
        _register_once(DMRegistry, self_attention.PortableSelfAttention,
                       "nemo_reason.backend.portable.self_attention.PortableSelfAttention",
                       mnas._DynamicSelfAttention)


def _register_mamba() -> None:
    from modelopt.torch.nas.plugins import megatron as mnas

    if mnas.HAS_MAMBA:  # modelopt registered Megatron's own Mamba classes (and the rule)
        _register_portable_mixer(mnas)
        return
    from megatron.core.models.mamba import MambaModel
    from megatron.core.ssm.mamba_layer import MambaLayer
    from modelopt.torch.nas.registry import DMRegistry

    key = "megatron.core.models.mamba.MambaModel"
    mnas.SUPPORTED_MODELS.setdefault(MambaModel, key)
    _register_once(DMRegistry, MambaModel, key, mnas._DynamicMCoreLanguageModel)
    _register_once(DMRegistry, MambaLayer, "megatron.core.ssm.mamba_layer.MambaLayer", mnas._DynamicMambaLayer)
    _register_portable_mixer(mnas)
    _rebuild_minitron_config(key)


def _register_portable_mixer(mnas) -> None:
    from dataclasses import replace

    from modelopt.torch.nas.registry import DMRegistry

    from nemo_reason.backend.portable.mamba_mixer import PortableMambaMixer
    from nemo_reason.ops.norm import RMSNormGated

    class _DynamicPortableMambaMixer(mnas._DynamicMambaMixer):
        """modelopt's dynamic mixer; the portable mixer's ``dims`` (its sizes) follow the hparams."""

        def _setup(self, *, hidden_size):
            super()._setup(hidden_size=hidden_size)
            self._register_dynamic_attribute("dims", self._get_dims)

        @staticmethod
        def _get_dims(mod, dims):
            return replace(dims, d_model=mod.d_model, nheads=mod.nheads, headdim=mod.headdim,
                           d_inner=mod.nheads * mod.headdim)

    _register_once(DMRegistry, PortableMambaMixer, "nemo_reason.backend.portable.mamba_mixer.PortableMambaMixer",
                   _DynamicPortableMambaMixer)
    _register_once(DMRegistry, RMSNormGated, "nemo_reason.ops.norm.RMSNormGated", mnas._DynamicExtendedRMSNorm)


def _rebuild_minitron_config(mamba_key: str) -> None:
    """``MCoreMinitronConfig`` as modelopt builds it when mamba-ssm imports (a ``MambaModel`` rule
    with the same default divisors), set where modelopt's mode descriptor and
    ``get_mcore_minitron_config`` read it."""
    from modelopt.torch.nas.registry import DMRegistry
    from modelopt.torch.opt.config import get_kwargs_for_create_model_with_rules
    from modelopt.torch.prune.plugins import mcore_minitron as mm
    from pydantic import create_model

    if any(getattr(f, "alias", None) == mamba_key for f in mm.MCoreMinitronConfig.model_fields.values()):
        return
    gpt = {"hidden_size_divisor": 256, "ffn_hidden_size_divisor": 512, "num_moe_experts_divisor": 8,
           "num_layers_divisor": 2}
    mm.MCoreMinitronConfig = create_model(
        "MCoreMinitronConfig",
        **get_kwargs_for_create_model_with_rules(
            registry=DMRegistry,
            default_rules={"megatron.core.models.gpt.GPTModel": gpt,
                           mamba_key: {**gpt, "mamba_head_dim_divisor": 8}},
            doc='Configuration for the ``"mcore_minitron"`` mode.'),
    )


def use_dot_product_attention(model) -> int:
    """Replace each SDPA core attention of ``model`` (in place) by Megatron's ``DotProductAttention``
    with the same settings; returns how many were replaced. Only where TE is not used: on CUDA the
    model holds TE's core attention, which modelopt handles itself."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    from nemo_reason.backend.portable.attention import SDPACoreAttention

    n = 0
    for module in model.modules():
        core = getattr(module, "core_attention", None)
        if isinstance(core, SDPACoreAttention):
            dpa = DotProductAttention(config=core.config, layer_number=core.layer_number,
                                      attn_mask_type=core.attn_mask_type, attention_type="self",
                                      attention_dropout=core.dropout_p, softmax_scale=core.softmax_scale)
            dpa.to(next(module.parameters()).device)
            module.core_attention = dpa
            n += 1
    return n


def prepare_for_pruning(model) -> None:
    """Make ``model`` (a bare GPTModel/MambaModel about to be pruned in place) one that modelopt can
    convert: the registrations above, and Megatron's core attention for the SDPA one."""
    install_modelopt_cpu()
    use_dot_product_attention(model)
