"""Parameter mappings between our checkpoint names and Hugging Face tensor names.

A mapping ties ONE of our parameters (its canonical checkpoint name, the Transformer Engine name
that ``dist_checkpointing`` stores whatever the backend, e.g.
``decoder.layers.3.self_attention.linear_qkv.layer_norm_weight``) to one or more Hugging Face
tensors, with the transform each way. Names may hold ``{layer}`` and ``{expert}`` placeholders;
:meth:`Mapping.at` fills them (:func:`for_layers` does it for a list of layers). Every transform is
a pure re-arrangement (slicing, concatenation, reshapes): no arithmetic, so a round trip is
bit-identical.

- :class:`Direct`: same tensor both sides (norms, projections, embeddings, biases).
- :class:`QKV`: Megatron's fused ``linear_qkv`` (weight ``[groups x (q_per_group + 2) x head_dim,
  hidden]`` or bias), laid out per query group ``[q heads of the group, k, v]``, <-> HF's separate
  ``q_proj`` / ``k_proj`` / ``v_proj`` (query head ``i`` uses key/value head ``i // q_per_group``).
- :class:`GatedMLP`: Megatron's fused ``linear_fc1`` = ``[gate; up]`` (rows) <-> HF's ``gate_proj`` and
  ``up_proj`` (SwiGLU).
- :class:`Stack`: one of our tensors <-> several HF tensors stacked along a new leading dimension
  (or the reverse with ``unstack``), for per-expert weights held as one tensor on one side.

Megatron-Bridge's ``param_mapping.py`` is the model (one registry of mappings per architecture);
unlike it, mappings here never see tensor parallelism: conversion happens at one process on full
tensors and ``dist_checkpointing`` reshards on load. What is left out: mappings that need
arithmetic (a norm stored as gamma - 1 on one side only is an error, not a silent +1).
"""

from __future__ import annotations

import copy
from typing import Dict, Iterable, List, Sequence, Tuple

import torch


class MappingError(ValueError):
    """A tensor whose shape does not fit the mapping; names both sides."""


class Mapping:
    """``ours`` (canonical name) <-> ``hf`` (names); subclasses define the transforms."""

    ours: str
    hf: Tuple[str, ...]

    def __init__(self, ours: str, hf: Sequence[str]):
        self.ours, self.hf = ours, tuple(hf)

    def at(self, **index) -> "Mapping":
        """A copy with ``{layer}``/``{expert}`` filled in."""
        m = copy.copy(self)
        m.ours, m.hf = self.ours.format(**index), tuple(n.format(**index) for n in self.hf)
        return m

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.ours!r} <-> {', '.join(self.hf)})"

    def to_ours(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def to_hf(self, tensor: torch.Tensor) -> List[torch.Tensor]:
        raise NotImplementedError

    def _fail(self, what: str) -> MappingError:
        return MappingError(f"{self.ours} <-> {', '.join(self.hf)}: {what}")


class Direct(Mapping):
    def __init__(self, ours: str, hf: str):
        super().__init__(ours, (hf,))

    def to_ours(self, tensors):
        return tensors[0]

    def to_hf(self, tensor):
        return [tensor]


class QKV(Mapping):
    """Fused per-query-group QKV <-> separate q, k, v (weights ``[rows, hidden]`` or biases ``[rows]``)."""

    def __init__(self, ours: str, q: str, k: str, v: str, *, heads: int, groups: int, head_dim: int):
        super().__init__(ours, (q, k, v))
        self.heads, self.groups, self.head_dim = heads, groups, head_dim

    def to_ours(self, tensors):
        q, k, v = tensors
        g, d, per = self.groups, self.head_dim, self.heads // self.groups
        tail = q.shape[1:]
        want = {"q": (self.heads * d, *tail), "k": (g * d, *tail), "v": (g * d, *tail)}
        for name, t in zip("qkv", (q, k, v)):
            if tuple(t.shape) != want[name]:
                raise self._fail(f"{name} has shape {tuple(t.shape)}, expected {want[name]} "
                                 f"({self.heads} heads, {g} key/value heads, head size {d})")
        fused = torch.cat([q.reshape(g, per * d, *tail), k.reshape(g, d, *tail), v.reshape(g, d, *tail)], dim=1)
        return fused.reshape(g * (per + 2) * d, *tail)

    def to_hf(self, tensor):
        g, d, per = self.groups, self.head_dim, self.heads // self.groups
        rows = g * (per + 2) * d
        if tensor.shape[0] != rows:
            raise self._fail(f"has {tensor.shape[0]} rows, expected {rows}")
        tail = tensor.shape[1:]
        grouped = tensor.reshape(g, (per + 2) * d, *tail)
        q, k, v = torch.split(grouped, [per * d, d, d], dim=1)
        return [q.reshape(g * per * d, *tail).contiguous(), k.reshape(g * d, *tail).contiguous(),
                v.reshape(g * d, *tail).contiguous()]


class GatedMLP(Mapping):
    """Fused ``[gate; up]`` <-> gate, up (rows)."""

    def __init__(self, ours: str, gate: str, up: str):
        super().__init__(ours, (gate, up))

    def to_ours(self, tensors):
        gate, up = tensors
        if gate.shape != up.shape:
            raise self._fail(f"gate {tuple(gate.shape)} and up {tuple(up.shape)} differ in shape")
        return torch.cat([gate, up], dim=0)

    def to_hf(self, tensor):
        if tensor.shape[0] % 2:
            raise self._fail(f"has an odd number of rows ({tensor.shape[0]}): not a fused gate/up")
        gate, up = torch.chunk(tensor, 2, dim=0)
        return [gate.contiguous(), up.contiguous()]


class Stack(Mapping):
    """Our one tensor = the HF tensors stacked on a new dim 0 (``hf`` in order); e.g. per-expert
    weights that one side holds as ``[experts, ...]``."""

    def to_ours(self, tensors):
        return torch.stack(list(tensors), dim=0)

    def to_hf(self, tensor):
        if tensor.shape[0] != len(self.hf):
            raise self._fail(f"has {tensor.shape[0]} entries on dim 0, expected {len(self.hf)}")
        return [t.contiguous() for t in tensor.unbind(0)]


def for_layers(templates: Iterable[Mapping], layers: Iterable[int], **index) -> List[Mapping]:
    """Each template at each layer (``{layer}`` = the layer index, plus any other ``index``)."""
    templates = list(templates)
    return [t.at(layer=i, **index) for i in layers for t in templates]


def check_unique(mappings: Sequence[Mapping]) -> Dict[str, Mapping]:
    """``{our name: mapping}``; ValueError when two mappings claim one of our or HF names (a bridge bug)."""
    ours: Dict[str, Mapping] = {}
    hf: Dict[str, str] = {}
    for m in mappings:
        if m.ours in ours:
            raise ValueError(f"two mappings for our tensor {m.ours}")
        ours[m.ours] = m
        for n in m.hf:
            if n in hf:
                raise ValueError(f"HF tensor {n} is mapped from both {hf[n]} and {m.ours}")
            hf[n] = m.ours
    return ours
