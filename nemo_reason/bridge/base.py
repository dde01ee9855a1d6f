"""The interface of one architecture's bridge, and a strict reader of Hugging Face ``config.json``.

A bridge subclasses :class:`Bridge` and is registered with
:func:`nemo_reason.bridge.register_bridge`::

    @register_bridge
    class LlamaBridge(Bridge):
        model_type = "llama"                       # config.json "model_type"
        architectures = ("LlamaForCausalLM",)      # config.json "architectures" it also answers to
        def to_model_config(self, hf: HFConfig) -> ModelConfig: ...     # stop on what we cannot represent
        def to_hf_config(self, m: ModelConfig, vocab_size: int) -> dict: ...
        def matches(self, m: ModelConfig) -> bool: ...   # export without a recorded HF architecture
        def mappings(self, m: ModelConfig) -> list[Mapping]: ...

Our side of a mapping is the canonical checkpoint name (the name ``dist_checkpointing`` stores,
the same for the te and local backends, e.g. ``decoder.layers.0.mlp.linear_fc1.layer_norm_weight``);
the HF side the safetensors name. ``mappings`` must cover every parameter of our model and every
tensor of the HF checkpoint, except HF tensors matching :meth:`Bridge.ignored_hf` (buffers some
checkpoints carry, e.g. rotary ``inv_freq``); the converter names anything missing or left over.

:class:`HFConfig` reads ``config.json`` the way the bridges need it: ``get`` with a default,
``expect`` (a field must hold one of the values we represent, else :class:`BridgeError` naming the
field, its value and what is supported), and the RoPE settings in both the transformers 4
(``rope_theta``, ``rope_scaling``, ``partial_rotary_factor``) and 5 (``rope_parameters``) spellings.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

from nemo_reason.bridge import BridgeError
from nemo_reason.bridge.mapping import Mapping
from nemo_reason.config.model import ModelConfig

_MISSING = object()


class HFConfig:
    """A Hugging Face ``config.json`` (a dict) with strict accessors; errors name ``source``."""

    def __init__(self, doc: Dict[str, Any], source: str = "config.json"):
        self.doc, self.source = dict(doc), source

    @property
    def model_type(self) -> str:
        return self.doc.get("model_type", "?")

    def get(self, name: str, default: Any = None) -> Any:
        v = self.doc.get(name, default)
        return default if v is None else v

    def require(self, name: str) -> Any:
        v = self.doc.get(name, _MISSING)
        if v is _MISSING or v is None:
            raise BridgeError(f"{self.source}: {self.model_type} needs the field {name!r}, which is missing")
        return v

    def fail(self, name: str, value: Any, why: str) -> BridgeError:
        return BridgeError(f"{self.source}: {name}={value!r} cannot be represented: {why}")

    def expect(self, name: str, allowed: Sequence[Any], default: Any = None) -> Any:
        """The field's value (``default`` when absent), which must be one of ``allowed``."""
        v = self.get(name, default)
        if v not in allowed:
            raise self.fail(name, v, f"supported: {', '.join(repr(a) for a in allowed)}")
        return v

    def rope(self, default_theta: float = 10000.0) -> Tuple[float, float]:
        """``(rope_theta, partial_rotary_factor)``; BridgeError for any RoPE scaling type but the
        default one (linear, dynamic, yarn, llama3, longrope change the frequencies)."""
        params = self.doc.get("rope_parameters") or {}
        scaling = self.doc.get("rope_scaling") or {}
        kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
        if kind != "default":
            field = "rope_parameters.rope_type" if params.get("rope_type") else "rope_scaling.type"
            raise self.fail(field, kind, "only the default RoPE is supported (no linear/dynamic/yarn/llama3/"
                            "longrope scaling); ModelConfig has no RoPE-scaling fields")
        theta = params.get("rope_theta", self.doc.get("rope_theta", default_theta))
        partial = params.get("partial_rotary_factor", self.doc.get("partial_rotary_factor", 1.0))
        return float(theta), float(partial)

    def no_sliding_window(self) -> None:
        """Sliding-window attention changes which tokens attend to which: not represented."""
        if self.doc.get("use_sliding_window") or (self.doc.get("sliding_window") and
                                                  "use_sliding_window" not in self.doc):
            name = "use_sliding_window" if self.doc.get("use_sliding_window") else "sliding_window"
            raise self.fail(name, self.doc.get(name), "sliding-window attention is not supported (full causal only)")
        kinds = set(self.doc.get("layer_types") or ["full_attention"])
        if kinds - {"full_attention"}:
            raise self.fail("layer_types", sorted(kinds), "only full_attention layers are supported")


def rope_fields(theta: float, partial: float = 1.0) -> Dict[str, Any]:
    """RoPE settings for an exported ``config.json`` in both transformers 4 and 5 spellings."""
    params: Dict[str, Any] = {"rope_type": "default", "rope_theta": theta}
    out: Dict[str, Any] = {"rope_theta": theta, "rope_scaling": None, "rope_parameters": params}
    if partial != 1.0:
        params["partial_rotary_factor"] = partial
        out["partial_rotary_factor"] = partial
    return out


class Bridge:
    """One Hugging Face architecture; see the module docstring for the contract."""

    model_type: str = ""
    architectures: Tuple[str, ...] = ()

    def to_model_config(self, hf: HFConfig) -> ModelConfig:
        raise NotImplementedError

    def to_hf_config(self, m: ModelConfig, vocab_size: int) -> Dict[str, Any]:
        raise NotImplementedError

    def matches(self, m: ModelConfig) -> bool:
        return False

    def mappings(self, m: ModelConfig) -> List[Mapping]:
        raise NotImplementedError

    def ignored_hf(self, m: ModelConfig) -> Tuple[str, ...]:
        """Regular expressions of HF tensor names read past on import (never written on export)."""
        return (r".*\.rotary_emb\.inv_freq$",)

    # --- where the layers are, for the parity gate's divergence report -------------------------
    # The gate hooks embedding, each layer and the final norm on both sides, in this order; a
    # bridge whose modules live elsewhere overrides these (None: no such point).
    def hf_embedding(self, hf_model):
        return hf_model.model.embed_tokens

    def hf_layers(self, hf_model) -> List[Any]:
        """The decoder layers of the transformers model, in order."""
        return list(hf_model.model.layers)

    def hf_final_norm(self, hf_model):
        return getattr(hf_model.model, "norm", None)

    def our_embedding(self, model):
        return model.embedding

    def our_layers(self, model) -> List[Any]:
        """The decoder layers of our (unwrapped, one-process) model, in order."""
        return list(model.decoder.layers)

    def our_final_norm(self, model):
        return getattr(model.decoder, "final_layernorm", None) or getattr(model.decoder, "final_norm", None)

    def check_export(self, m: ModelConfig) -> None:
        """BridgeError when ``m`` cannot be written as this architecture (called before any work)."""
        if not self.matches(m):
            raise BridgeError(f"this model cannot be exported as {self.model_type}: it does not have that "
                              f"architecture (activation={m.activation}, normalization={m.normalization}, "
                              f"qk_layernorm={m.qk_layernorm}, add_qkv_bias={m.add_qkv_bias})")


class FieldChecks:
    """Mixin for a bridge that lists what it cannot export field by field: it implements
    :meth:`export_problems` (``model.field=value`` per setting this architecture cannot hold, built
    with :class:`Problems`); :meth:`matches` and :meth:`check_export` follow from it, and the error ends with
    :attr:`export_summary` (default: the first line of the class docstring)."""

    export_summary = ""

    def export_problems(self, m: ModelConfig) -> List[str]:
        raise NotImplementedError

    def matches(self, m: ModelConfig) -> bool:
        return not self.export_problems(m)

    def check_export(self, m: ModelConfig) -> None:
        bad = self.export_problems(m)
        if bad:
            summary = self.export_summary or (type(self).__doc__ or "").strip().splitlines()[0]
            raise BridgeError(f"this model cannot be exported as {self.model_type}: {', '.join(bad)} ({summary})")


class Problems(list):
    """The ``model.field=value`` strings of :meth:`FieldChecks.export_problems`, collected by :meth:`want`."""

    def __init__(self, m: ModelConfig):
        super().__init__()
        self.m = m

    def want(self, name: str, ok: bool, value: Any = None) -> None:
        """Record ``model.name=value`` unless ``ok``."""
        if not ok:
            self.append(f"model.{name}={getattr(self.m, name) if value is None else value!r}")
