"""Hugging Face import and export, one bridge per architecture, every conversion checked by logits.

    nemo-reason import-hf HF_DIR --output CKPT [--no-verify]     (nemo_reason/bridge/commands.py)
    nemo-reason export-hf CKPT --output HF_DIR [--no-verify] [--dtype auto|fp32|bf16]

A bridge (:class:`~nemo_reason.bridge.base.Bridge`, registered here with :func:`register_bridge`
under the Hugging Face ``model_type`` it handles) knows three things about one architecture: its
config (``config.json`` <-> :class:`~nemo_reason.config.model.ModelConfig`, stopping on any field
we cannot represent), its tensor names (a list of :mod:`~nemo_reason.bridge.mapping` mappings) and,
for the parity gate's report, where its layers are. Everything else is shared
(:mod:`.convert`): streaming shard by shard from safetensors, building our model at one process,
writing our self-describing checkpoint (or sharded safetensors with an index), the tokenizer, the
parity gate (:mod:`.parity`) and publishing by rename only after the gate passes.

Bridges live in their own modules (:data:`BUILTIN_MODULES`), imported on the first look-up.
Left out: reading from a hub (local folders only), import straight into a TP/PP layout (import at
one process; ``dist_checkpointing`` reshards on load), and tokenizers other than ``tokenizer.json``
(a SentencePiece ``tokenizer.model`` is copied but not converted).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Dict, List

from nemo_reason.config.errors import ConfigError
from nemo_reason.registry import Registry


class BridgeError(ConfigError):
    """A model we cannot convert (unsupported architecture, a config field we cannot represent, a
    missing or unexpected tensor) or a conversion that failed its parity check; the CLI exits 2."""


class ParityError(BridgeError):
    """The converted model computes something else than the original (see :mod:`.parity`)."""


# Modules that register bridges; the ones not present in this tree are skipped.
BUILTIN_MODULES = (
    "nemo_reason.bridge.llama",
    "nemo_reason.bridge.qwen",
    "nemo_reason.bridge.nemotron",
    "nemo_reason.bridge.moe",
    "nemo_reason.bridge.mixtral",
    "nemo_reason.bridge.qwen_moe",
    "nemo_reason.bridge.nemotron_h",
)

BRIDGES: Registry = Registry("Hugging Face architecture")
# HF class names (config.json "architectures") -> model_type
_BY_CLASS: Dict[str, str] = {}
_loaded = False


def register_bridge(cls):
    """Class decorator: register a :class:`~nemo_reason.bridge.base.Bridge` subclass under its
    ``model_type`` (and its ``architectures`` class names); a name registered twice is an error."""
    BRIDGES.register(cls.model_type, (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "")(cls)
    for name in cls.architectures:
        if name in _BY_CLASS:
            raise ValueError(f"HF architecture {name} is claimed by bridges {_BY_CLASS[name]} and {cls.model_type}")
        _BY_CLASS[name] = cls.model_type
    return cls


def load_builtin_bridges() -> Registry:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in BUILTIN_MODULES:
            if importlib.util.find_spec(mod) is not None:
                importlib.import_module(mod)
    return BRIDGES


def supported() -> List[str]:
    """``model_type (HF classes)`` of every bridge, for error messages and ``--help``."""
    reg = load_builtin_bridges()
    return [f"{n} ({', '.join(reg[n].architectures)})" for n in reg.names()]


def bridge_for_hf(hf_config: Dict[str, Any], source: str = "config.json"):
    """The bridge (an instance) for a Hugging Face ``config.json`` (by ``model_type``, else by its
    ``architectures``); BridgeError naming the supported ones."""
    reg = load_builtin_bridges()
    mt = hf_config.get("model_type")
    if mt in reg:
        return reg[mt]()
    for cls_name in hf_config.get("architectures") or []:
        if cls_name in _BY_CLASS:
            return reg[_BY_CLASS[cls_name]]()
    raise BridgeError(f"{source}: model_type={mt!r} (architectures {hf_config.get('architectures')}) is not "
                      f"supported; supported: {'; '.join(supported())}")


def bridge_for_model(model_cfg, model_type: str = None):
    """The bridge that exports ``model_cfg``: ``model_type`` when given (the HF architecture the
    checkpoint was imported from, or ``--model-type``), else the one bridge whose ``matches``
    accepts it; BridgeError naming the candidates otherwise."""
    reg = load_builtin_bridges()
    if model_type:
        if model_type not in reg:
            raise BridgeError(f"--model-type {model_type!r} is not supported; supported: {'; '.join(supported())}")
        return reg[model_type]()
    fits = [n for n in reg.names() if reg[n]().matches(model_cfg)]
    if len(fits) == 1:
        return reg[fits[0]]()
    if not fits:
        raise BridgeError(f"no Hugging Face architecture represents this model (type={model_cfg.type}, "
                          f"activation={model_cfg.activation}, normalization={model_cfg.normalization}, "
                          f"qk_layernorm={model_cfg.qk_layernorm}, add_qkv_bias={model_cfg.add_qkv_bias}, "
                          f"layernorm_zero_centered_gamma={model_cfg.layernorm_zero_centered_gamma}); "
                          f"supported: {'; '.join(supported())}")
    raise BridgeError(f"the model fits several Hugging Face architectures ({', '.join(fits)}): choose one with "
                      "--model-type")
