"""What a checkpoint holds, readable with no recipe at hand: architecture, tokenizer, progress.

Every checkpoint folder carries ``meta.json`` (written by :func:`nemo_reason.checkpoint.io.save`
before publish) and a copy of its tokenizer's files::

    iter_0000100/
        meta.json        # {"format": 1, "step": 100, "consumed_samples": 6400, "tokens": 819200,
                         #  "params": 1031232, "step_type": "pretrain", "fingerprint": "...",
                         #  "layout": {"tp": 1, ...}, "saved_at": 1.7e9,
                         #  "model": {ModelConfig fields}, "tokenizer": {record, below}, ...caller's extras}
        tokenizer/       # tokenizer.json (+ tokenizer_config.json) for hf and bundled*, tokenizer.model
                         # for sentencepiece, nothing for byte

The tokenizer record (:func:`tokenizer_record`) says which kind it is (the names of
``nemo_reason.data.tokenizer.TOKENIZERS``), where it came from, its vocabulary size and special
ids, and, once copied, which file in the checkpoint :func:`load_tokenizer` builds it from.

Checkpoints written before ``meta.json`` existed are read from what they have: ``config.yaml``
(the run's resolved config: its ``model:``, ``data:`` tokenizer fields and ``trainer.seq_length``)
and ``train_state.json``. Only the ``model:`` section is parsed (onto :class:`ModelConfig`), not
the whole run config, so a checkpoint stays readable when other config groups or step types change.

Architecture (:data:`ARCHITECTURE_FIELDS`): the model fields that set the parameter shapes, the
set of parameters, or what the weights compute; a checkpoint loads only into a model that agrees
on all of them (:func:`check_architecture`). Not architecture: the implementation (``backend``,
``moe_grouped_gemm``, ``moe_token_dispatcher_type``, ``mamba_chunk_size``), training knobs
(dropout, init, MoE routing and balancing losses, capacity), the planning-only ``vocab_size``
(the tokenizer's vocabulary is compared instead) and the positional-encoding reach (``rotary_base``,
``rotary_percent``, ``max_position_embeddings`` under RoPE: context extension changes them).

This module imports no torch or Megatron (tokenizers only inside :func:`load_tokenizer` and
:func:`tokenizer_record`), so ``nemo-reason show-checkpoint`` is fast.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from nemo_reason.config.errors import ConfigError
from nemo_reason.config.model import ModelConfig

META_FILE = "meta.json"
META_FORMAT = 1
TOKENIZER_DIR = "tokenizer"
# What an hf tokenizer needs beside tokenizer.json (the eos/pad names live in tokenizer_config.json);
# a folder given as data.tokenizer_path may also hold model weights, which are not copied.
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# Raw ModelConfig fields that make up the architecture, in display order; copying these from a
# checkpoint's config onto another ModelConfig reproduces its shapes (see with_architecture).
ARCHITECTURE_FIELDS = (
    "type", "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
    "kv_channels", "activation", "normalization", "add_bias_linear", "qk_layernorm",
    "add_qkv_bias", "layernorm_zero_centered_gamma", "position_embedding_type", "untie_embeddings_and_output_weights", "make_vocab_size_divisible_by",
    "hybrid_pattern", "hybrid_attention_ratio", "hybrid_mlp_ratio",
    "mamba_state_dim", "mamba_head_dim", "mamba_num_groups", "mamba_num_heads",
    "num_moe_experts", "moe_layer_freq", "moe_ffn_hidden_size", "moe_shared_expert_intermediate_size",
    "moe_shared_expert_gate", "moe_router_enable_expert_bias",
)


def architecture(m: ModelConfig) -> Dict[str, Any]:
    """The resolved architecture of ``m``: defaults filled in (query groups, head size, Mamba heads,
    the hybrid layer pattern) and only the fields that mean something for its type, so two configs
    that build the same network compare equal."""
    a: Dict[str, Any] = {
        "type": m.type, "num_layers": m.num_layers, "hidden_size": m.hidden_size,
        "ffn_hidden_size": m.ffn_hidden_size, "num_attention_heads": m.num_attention_heads,
        "num_query_groups": m.num_query_groups or m.num_attention_heads,
        "kv_channels": m.kv_channels or (m.hidden_size // m.num_attention_heads if m.num_attention_heads else None),
        "activation": m.activation, "normalization": m.normalization, "add_bias_linear": m.add_bias_linear,
        "qk_layernorm": m.qk_layernorm, "position_embedding_type": m.position_embedding_type,
        "untie_embeddings_and_output_weights": m.untie_embeddings_and_output_weights,
        "make_vocab_size_divisible_by": m.make_vocab_size_divisible_by,
    }
    for name in ("add_qkv_bias", "layernorm_zero_centered_gamma"):  # listed only when set (Qwen2, Nemotron-4)
        if getattr(m, name, False):
            a[name] = True
    if m.position_embedding_type == "learned_absolute":  # a table of that many rows
        a["max_position_embeddings"] = m.max_position_embeddings
    if m.type == "hybrid":
        from nemo_reason.models.pattern import PatternError, allocate

        try:
            a["hybrid_pattern"] = "".join(allocate(m.num_layers, m.hybrid_attention_ratio, m.hybrid_mlp_ratio,
                                                   m.hybrid_pattern))
        except PatternError:
            a["hybrid_pattern"] = m.hybrid_pattern
        a.update(mamba_state_dim=m.mamba_state_dim, mamba_head_dim=m.mamba_head_dim,
                 mamba_num_groups=m.mamba_num_groups, mamba_num_heads=m.mamba_heads if m.mamba_head_dim else None)
    if m.is_moe:
        a.update(num_moe_experts=m.num_moe_experts,
                 moe_ffn_hidden_size=m.moe_ffn_hidden_size or m.ffn_hidden_size,
                 moe_shared_expert_intermediate_size=m.moe_shared_expert_intermediate_size,
                 moe_shared_expert_gate=m.moe_shared_expert_gate,
                 moe_router_enable_expert_bias=m.moe_router_enable_expert_bias)
        if m.type == "moe":
            a["moe_layer_freq"] = m.moe_layer_freq
    return a


def architecture_diff(saved: ModelConfig, current: ModelConfig) -> List[Tuple[str, Any, Any]]:
    """``[(field, saved value, current value)]`` for every architecture field that differs."""
    a, b = architecture(saved), architecture(current)
    return [(k, a.get(k), b.get(k)) for k in list(a) + [k for k in b if k not in a] if a.get(k) != b.get(k)]


# What the weights compute beyond their shapes, which a checkpoint imported from elsewhere (a
# Hugging Face model: RoPE base 500000, RMSNorm eps 1e-6) sets differently from ModelConfig's
# defaults. Not architecture (context extension changes the RoPE fields on purpose): a step
# takes them from its input checkpoint only where its own config leaves them at the default.
NUMERIC_FIELDS = ("layernorm_epsilon", "rotary_base", "rotary_percent",
                  # MoE routing (Qwen2-MoE: un-normalised top-k = pre_softmax; Nemotron-H: sigmoid, scaled)
                  "moe_router_topk", "moe_router_score_function", "moe_router_pre_softmax",
                  "moe_router_topk_scaling_factor")


def adopted_numerics(saved: ModelConfig, current: ModelConfig) -> List[Tuple[str, Any, Any]]:
    """``[(field, saved value, current value)]`` of the :data:`NUMERIC_FIELDS` that
    :func:`with_architecture` takes from ``saved``: those ``current`` leaves at the default."""
    defaults = ModelConfig()
    return [(f, getattr(saved, f), getattr(current, f)) for f in NUMERIC_FIELDS
            if getattr(current, f) == getattr(defaults, f) and getattr(saved, f) != getattr(current, f)]


def with_architecture(model_cfg: ModelConfig, saved: ModelConfig) -> ModelConfig:
    """``model_cfg`` with the architecture of ``saved`` (a checkpoint's), and the numerics
    (:data:`NUMERIC_FIELDS`) it leaves at their defaults, everything else kept."""
    keep = {f: getattr(saved, f) for f in ARCHITECTURE_FIELDS}
    keep.update({f: v for f, v, _ in adopted_numerics(saved, model_cfg)})
    if saved.position_embedding_type == "learned_absolute":
        keep["max_position_embeddings"] = saved.max_position_embeddings
    return dataclasses.replace(model_cfg, **keep)


def model_config_from_dict(d: Dict[str, Any]) -> ModelConfig:
    """A ModelConfig from a plain mapping; fields this version does not know are ignored (a newer
    writer), missing ones take their defaults (an older one)."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in dict(d).items() if k in known})


# --- tokenizer -----------------------------------------------------------------------------------

def tokenizer_record(data_cfg, tokenizer=None) -> Dict[str, Any]:
    """The record of the tokenizer ``data_cfg`` names (``data.tokenizer``, ``tokenizer_path``,
    ``cache_dir``), built or as ``tokenizer`` when the caller has it already; for a tokenizer
    :func:`load_tokenizer` built from a checkpoint, that checkpoint's record. ``source`` is the file
    :func:`copy_tokenizer` copies into each checkpoint."""
    from nemo_reason.data.tokenizer import build_tokenizer, file_digest, tokenizer_json

    carried = getattr(tokenizer, "checkpoint_record", None)
    if carried:  # loaded from a checkpoint (load_tokenizer): its record, e.g. an imported model's hf tokenizer
        return dict(carried)
    name, path = data_cfg.tokenizer, data_cfg.tokenizer_path
    if tokenizer is None:
        tokenizer = build_tokenizer(name, path, data_cfg.cache_dir)
    source = None
    if name in ("bundled", "bundled_digits"):
        from nemo_reason.data.bpe import bundled_tokenizer_path

        source = Path(getattr(tokenizer, "path", None)
                      or bundled_tokenizer_path(data_cfg.cache_dir, split_digits=name == "bundled_digits"))
    elif name == "hf":
        source = tokenizer_json(path)
    elif name == "sentencepiece":
        source = Path(path).expanduser()
    rec: Dict[str, Any] = {"name": name, "path": str(path) if path else None,
                           "source": str(source.resolve()) if source else None,
                           "class": type(tokenizer).__name__, "vocab_size": int(tokenizer.vocab_size),
                           "eod": int(tokenizer.eod), "pad": int(tokenizer.pad)}
    if source is not None:
        rec["sha256"] = (getattr(tokenizer, "unique_identifiers", {}) or {}).get("sha256") or file_digest(source)
    return rec


def copy_tokenizer(record: Dict[str, Any], ckpt_dir: str | os.PathLike) -> Dict[str, Any]:
    """Copy the tokenizer's files into ``<ckpt_dir>/tokenizer/``; returns the record with ``file``
    (what :func:`load_tokenizer` builds from) and ``files`` (all copied), relative to ``ckpt_dir``."""
    rec = dict(record)
    src = rec.get("source")
    if rec.get("name") == "byte" or not src:
        return rec
    src = Path(src)
    if not src.is_file():
        raise ConfigError(f"tokenizer file {src} is gone: cannot copy it into the checkpoint {ckpt_dir} "
                          "(restore it, or train with the same data.tokenizer_path)")
    dest = Path(ckpt_dir) / TOKENIZER_DIR
    dest.mkdir(parents=True, exist_ok=True)
    if rec["name"] == "sentencepiece":
        pairs = [(src, "tokenizer.model")]
    else:
        pairs = [(src, "tokenizer.json")]
        pairs += [(src.parent / n, n) for n in HF_TOKENIZER_FILES[1:] if (src.parent / n).is_file()]
    for s, n in pairs:
        shutil.copyfile(s, dest / n)
    rec["file"] = f"{TOKENIZER_DIR}/{pairs[0][1]}"
    rec["files"] = [f"{TOKENIZER_DIR}/{n}" for _, n in pairs]
    return rec


def load_tokenizer(ckpt_dir: str | os.PathLike, cache_dir: str = ""):
    """The tokenizer a checkpoint was trained with, built from its own copy (no original file
    needed); for a checkpoint older than the copy, from the original path its config names."""
    from nemo_reason.data.tokenizer import TokenizerError, build_tokenizer

    ckpt_dir = Path(ckpt_dir)
    rec = read_meta(ckpt_dir).tokenizer
    name = rec.get("name")
    if not name:
        raise ConfigError(f"{ckpt_dir}: the checkpoint records no tokenizer (neither {META_FILE} nor config.yaml)")
    try:
        if rec.get("file"):
            kind = "sentencepiece" if name == "sentencepiece" else "hf"
            tok = build_tokenizer(kind, str(ckpt_dir / rec["file"]))
            if name in ("bundled", "bundled_digits"):  # the same dataset-cache identity as Bundled*Tokenizer
                tok.unique_identifiers["tokenizer_path"] = [name]
                tok.unique_description = json.dumps(tok.unique_identifiers, indent=4)
        else:
            tok = build_tokenizer(name, rec.get("path"), cache_dir or rec.get("cache_dir") or "")
    except TokenizerError as exc:
        raise ConfigError(f"{ckpt_dir}: cannot build its tokenizer ({exc}); the checkpoint holds no copy of it "
                          "(written before tokenizer copies): restore the original file") from None
    want = rec.get("vocab_size")
    if want is not None and tok.vocab_size != want:
        raise ConfigError(f"{ckpt_dir}: its tokenizer has {tok.vocab_size} tokens, the checkpoint was trained "
                          f"with {want}: the tokenizer file changed since (restore the one it was trained with)")
    # What a step continuing from this checkpoint records for it (tokenizer_record): this record, with
    # the checkpoint's copy as the file to copy on, not whatever data.tokenizer names.
    carried = {k: v for k, v in rec.items() if k not in ("file", "files")}
    if rec.get("file"):
        carried["source"] = str((ckpt_dir / rec["file"]).resolve())
    tok.checkpoint_record = carried
    return tok


# --- writing -------------------------------------------------------------------------------------

def build_meta(model_cfg, tokenizer: Optional[Dict[str, Any]] = None, *, step_type: Optional[str] = None,
               fingerprint: Optional[str] = None, tokens: Optional[int] = None, params: Optional[int] = None,
               seq_length: Optional[int] = None, **extra) -> Dict[str, Any]:
    """The ``meta`` argument of :func:`nemo_reason.checkpoint.io.save`. ``tokens``: tokens seen (else
    ``consumed_samples x seq_length`` at each save, when ``seq_length`` is given); ``params``: else
    counted from what the save stored."""
    model = dataclasses.asdict(model_cfg) if dataclasses.is_dataclass(model_cfg) else dict(model_cfg)
    return {"model": model, "tokenizer": tokenizer, "step_type": step_type, "fingerprint": fingerprint,
            "tokens": tokens, "params": params, "seq_length": seq_length, **extra}


def write_meta(ckpt_dir: str | os.PathLike, meta: Optional[Dict[str, Any]], *, step: int, consumed_samples: int,
               layout: Dict[str, int], saved_at: float, params: Optional[int] = None) -> Dict[str, Any]:
    """Copy the tokenizer in and write ``meta.json`` (rank 0, inside the unpublished folder)."""
    doc = dict(meta or {})
    if isinstance(doc.get("model"), ModelConfig):
        doc["model"] = dataclasses.asdict(doc["model"])
    if doc.get("tokenizer"):
        doc["tokenizer"] = copy_tokenizer(doc["tokenizer"], ckpt_dir)
    if doc.get("tokens") is None and doc.get("seq_length"):
        doc["tokens"] = int(consumed_samples) * int(doc["seq_length"])
    if doc.get("params") is None:
        doc["params"] = params
    doc.update(format=META_FORMAT, step=int(step), consumed_samples=int(consumed_samples), layout=layout,
               saved_at=saved_at)
    (Path(ckpt_dir) / META_FILE).write_text(json.dumps(doc, indent=1, default=str))
    return doc


# --- reading -------------------------------------------------------------------------------------

@dataclass
class CheckpointMeta:
    path: str
    model: Optional[ModelConfig]
    tokenizer: Dict[str, Any]
    step: int
    consumed_samples: int
    tokens: Optional[int] = None
    params: Optional[int] = None
    step_type: Optional[str] = None
    fingerprint: Optional[str] = None
    layout: Dict[str, int] = field(default_factory=dict)
    saved_at: Optional[float] = None
    save_seconds: Optional[float] = None
    size_bytes: Optional[int] = None       # total of the files the marker lists (None: an older marker)
    source: str = META_FILE                # where the architecture was read: meta.json or config.yaml
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["architecture"] = architecture(self.model) if self.model else None
        return d


_META_KEYS = {"format", "model", "tokenizer", "step", "consumed_samples", "tokens", "params", "step_type",
              "fingerprint", "layout", "saved_at", "save_seconds"}


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is unreadable ({exc}): the checkpoint is damaged") from None
    return doc if isinstance(doc, dict) else {}


def _from_config_yaml(ckpt_dir: Path) -> Dict[str, Any]:
    """What an older checkpoint's config.yaml says about it (model, tokenizer, tokens, step type)."""
    path = ckpt_dir / "config.yaml"
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:  # noqa: BLE001 - omegaconf/yaml raise many types on a damaged file
        raise ConfigError(f"{path} is unreadable ({exc}): the checkpoint is damaged") from None
    out: Dict[str, Any] = {}
    if isinstance(cfg.get("model"), dict):
        out["model"] = cfg["model"]
    data = cfg.get("data") or {}
    if data.get("tokenizer"):
        out["tokenizer"] = {"name": data["tokenizer"], "path": data.get("tokenizer_path"),
                            "cache_dir": data.get("cache_dir") or ""}
        if data["tokenizer"] == "byte":
            out["tokenizer"]["vocab_size"] = 258
    out["seq_length"] = (cfg.get("trainer") or {}).get("seq_length")
    step_dir = ckpt_dir.parent.parent.name  # <run.dir>/<step>/checkpoints/iter_*
    for entry in cfg.get("pipeline") or []:
        if isinstance(entry, dict) and step_dir in (entry.get("name"), entry.get("type")):
            out["step_type"] = entry.get("type")
    return out


def read_meta(ckpt_dir: str | os.PathLike) -> CheckpointMeta:
    """Everything a checkpoint folder says about itself, from ``meta.json``, falling back to
    ``config.yaml`` / ``train_state.json`` / the marker for what an older checkpoint lacks."""
    from nemo_reason.checkpoint.marker import MARKER, iter_step

    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"{ckpt_dir}: no such checkpoint folder")
    doc = _read_json(ckpt_dir / META_FILE)
    state = _read_json(ckpt_dir / "train_state.json")
    marker = _read_json(ckpt_dir / MARKER)
    old = _from_config_yaml(ckpt_dir) if not doc.get("model") or not doc.get("tokenizer") else {}
    source = META_FILE if doc.get("model") else ("config.yaml" if old.get("model") else "")
    model = doc.get("model") or old.get("model")
    step = doc.get("step", state.get("step", marker.get("step", iter_step(ckpt_dir))))
    consumed = int(doc.get("consumed_samples", state.get("consumed_samples", 0)) or 0)
    tokens = doc.get("tokens")
    seq = doc.get("seq_length") or old.get("seq_length")
    if tokens is None and seq and consumed:
        tokens = consumed * int(seq)
    return CheckpointMeta(
        path=str(ckpt_dir), model=model_config_from_dict(model) if model else None,
        tokenizer=doc.get("tokenizer") or old.get("tokenizer") or {},
        step=int(step or 0), consumed_samples=consumed, tokens=tokens, params=doc.get("params"),
        step_type=doc.get("step_type") or old.get("step_type"), fingerprint=doc.get("fingerprint"),
        layout=doc.get("layout") or state.get("layout") or {},
        saved_at=doc.get("saved_at", state.get("saved_at")), save_seconds=state.get("save_seconds"),
        size_bytes=marker.get("total_bytes"), source=source,
        extra={k: v for k, v in doc.items() if k not in _META_KEYS})


def model_config_of(ckpt_dir: str | os.PathLike) -> ModelConfig:
    """The architecture a checkpoint holds; FileNotFoundError when it records none."""
    m = read_meta(ckpt_dir).model
    if m is None:
        raise FileNotFoundError(f"{ckpt_dir}: the checkpoint records no model config (no {META_FILE} "
                                "with a model, no config.yaml)")
    return m


def check_architecture(ckpt_dir: str | os.PathLike, model_cfg: ModelConfig,
                       vocab_size: Optional[int] = None) -> None:
    """ConfigError naming every architecture field (and the tokenizer's vocabulary size, when
    ``vocab_size`` is given) in which the checkpoint differs from ``model_cfg``; nothing when it
    records no architecture."""
    info = read_meta(ckpt_dir)
    diffs = architecture_diff(info.model, model_cfg) if info.model is not None else []
    saved_vocab = info.tokenizer.get("vocab_size")
    if vocab_size is not None and saved_vocab is not None and int(saved_vocab) != int(vocab_size):
        diffs.append(("vocab_size (tokenizer)", saved_vocab, vocab_size))
    if diffs:
        said = "; ".join(f"checkpoint has {k}={a}, the model being loaded has {k}={b}" for k, a, b in diffs)
        raise ConfigError(f"{ckpt_dir} holds another architecture: {said}. Build the model from the checkpoint "
                          "(`nemo-reason show-checkpoint PATH` prints its architecture) or set model.* to match")
