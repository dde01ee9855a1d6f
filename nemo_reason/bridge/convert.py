"""``import_hf`` and ``export_hf``: the shared conversion around each architecture's bridge.

Import (HF folder -> our checkpoint folder ``output``):

1. ``config.json`` -> bridge (by ``model_type``) -> ModelConfig (stops on any field it cannot
   represent); ``tokenizer.json`` -> the vocabulary; our embedding is padded to exactly HF's
   ``vocab_size`` rows (``make_vocab_size_divisible_by`` chosen for that, TP-splittable);
2. the bridge's mappings against the safetensors index: every missing and every unexpected
   tensor is named before any model is built;
3. our model at one process, filled mapping by mapping (tensors read one at a time from the
   memory-mapped shards, cast to fp32), saved as our checkpoint (meta.json records the ModelConfig,
   the tokenizer as an ``hf`` tokenizer with its files copied in, and ``hf``: the source's
   ``config.json``, model type and dtype, which export uses);
4. the parity gate (:mod:`.parity`): the saved checkpoint, loaded again, against the transformers
   model of the source folder;
5. publish: the checkpoint is written into a hidden sibling (``.<name>.tmp-<pid>``) and renamed to
   ``output`` only after the gate passed; on failure the sibling is removed.

Export (our checkpoint, any layout -> HF folder ``output``): the model built at one process from the
checkpoint's own architecture and tokenizer (``dist_checkpointing`` reshards), mappings to HF
names, sharded safetensors written as they fill (``max_shard_bytes``) with the index,
``config.json`` (the recorded source config with every architecture field rewritten, so a pruned
or fine-tuned model gets its own shapes), the tokenizer files, the gate against the written folder,
and the same publish-by-rename. :func:`hf_weights` yields the HF tensors of a model in memory
without writing anything (Megatron-Bridge's ``export_hf_weights``).

Peak memory: our model once, plus the tensors of one mapping (import) or one output shard (export);
the gate holds one model at a time (ours is traced and freed before the transformers model is
loaded). ``verify=False`` (``--no-verify``) skips the gate.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, Optional

import torch

from nemo_reason.bridge import BridgeError, bridge_for_hf, bridge_for_model
from nemo_reason.bridge.base import HFConfig
from nemo_reason.bridge.hf_files import (DEFAULT_SHARD_BYTES, SafetensorsReader, SafetensorsWriter,
                                         copy_tokenizer_files, read_config)
from nemo_reason.bridge.mapping import MappingError, check_unique
from nemo_reason.config.errors import ConfigError

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
           "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _say(log: Optional[Callable[[str], None]], msg: str) -> None:
    if log:
        log(msg)


def _tmp_sibling(output: Path) -> Path:
    return output.parent / f".{output.name}.tmp-{os.getpid()}"


def _check_output(output: Path) -> None:
    if output.exists():
        raise BridgeError(f"{output} exists: give a new folder for --output (nothing is overwritten)")
    if not output.parent.is_dir():
        raise BridgeError(f"{output.parent}: no such folder (the parent of --output must exist)")


def vocab_divisor(hf_vocab: int, tok_vocab: int) -> int:
    """``make_vocab_size_divisible_by`` that pads ``tok_vocab`` to exactly ``hf_vocab``: the largest
    power of two up to 128 that does, else ``hf_vocab`` itself."""
    from nemo_reason.models.vocab import padded_vocab_size

    if tok_vocab > hf_vocab:
        raise BridgeError(f"the tokenizer has {tok_vocab} tokens but config.json vocab_size={hf_vocab}: the "
                          "embedding has fewer rows than the tokenizer has ids")
    for d in (128, 64, 32, 16, 8, 4, 2, 1):
        if padded_vocab_size(tok_vocab, d, 1) == hf_vocab:
            return d
    return hf_vocab


def _hf_tokenizer_record(hf_dir: Path) -> Dict:
    from nemo_reason.checkpoint.meta import tokenizer_record
    from nemo_reason.data.tokenizer import TokenizerError

    try:
        return tokenizer_record(SimpleNamespace(tokenizer="hf", tokenizer_path=str(hf_dir), cache_dir=""))
    except TokenizerError as exc:
        raise BridgeError(f"{hf_dir}: cannot read its tokenizer ({exc})") from None


def _plan_import(bridge, m, reader: SafetensorsReader, hf_dir: Path):
    """The mappings, after checking them against the checkpoint's names: missing / unexpected named."""
    mappings = bridge.mappings(m)
    check_unique(mappings)
    have = set(reader.names())
    needed = {n for mp in mappings for n in mp.hf}
    missing = sorted(needed - have)
    ignored = [re.compile(p) for p in bridge.ignored_hf(m)]
    tied_head = not m.untie_embeddings_and_output_weights and "lm_head.weight" in have
    extra = sorted(n for n in have - needed if not any(p.match(n) for p in ignored)
                   and not (tied_head and n == "lm_head.weight"))
    if missing or extra:
        said = []
        if missing:
            said.append(f"missing {len(missing)} tensor(s) this {bridge.model_type} config needs: "
                        f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if extra:
            said.append(f"{len(extra)} unexpected tensor(s): {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}")
        if "lm_head.weight" in missing:
            said.append("config.json has tie_word_embeddings=false but there is no lm_head.weight: set "
                        "tie_word_embeddings=true if the output layer is the embedding")
        raise BridgeError(f"{hf_dir}: the safetensors do not match config.json ({bridge.model_type}): "
                          + "; ".join(said))
    return mappings, tied_head


def _fill(model, mappings, get, log=None) -> None:
    """Copy every mapping's converted tensor into our model (checks names and shapes)."""
    from nemo_reason.bridge.megatron_side import canonical_tensors

    ours = canonical_tensors(model)
    named = {mp.ours for mp in mappings}
    if set(ours) != named:
        miss, extra = sorted(set(ours) - named), sorted(named - set(ours))
        raise BridgeError(f"the bridge's mappings do not cover our model: unmapped {miss[:6]}, unknown {extra[:6]} "
                          "(a bridge bug, or a ModelConfig field the bridge does not handle)")
    with torch.no_grad():
        for mp in mappings:
            try:
                t = mp.to_ours([get(n).to(torch.float32) for n in mp.hf])
            except MappingError as exc:
                raise BridgeError(str(exc)) from None
            dest = ours[mp.ours]
            if tuple(t.shape) != tuple(dest.shape):
                raise BridgeError(f"{', '.join(mp.hf)} give {mp.ours} the shape {tuple(t.shape)}; the model built "
                                  f"from config.json has {tuple(dest.shape)}")
            dest.copy_(t)


def _gate(our_trace, hf_dir: Path, bridge, tokens, what: str, log) -> dict:
    from nemo_reason.bridge import parity
    from nemo_reason.bridge.megatron_side import release_memory

    hf_model = parity.load_hf_model(hf_dir)
    try:
        ref = parity.trace_hf(hf_model, bridge, tokens)
    finally:
        del hf_model
        release_memory()
    report = parity.compare(ref, our_trace)
    _say(log, f"[nemo-reason] parity ({what}): {report.summary()}")
    parity.check(report, what)
    return report.to_dict()


def import_hf(hf_dir, output, *, verify: bool = True, seq_len: int = 32, log: Optional[Callable] = print) -> dict:
    """Convert the Hugging Face folder ``hf_dir`` into our checkpoint folder ``output``; returns a
    summary (``model_type``, ``checkpoint``, ``parity`` report, seconds)."""
    from nemo_reason.bridge import parity
    from nemo_reason.bridge.megatron_side import build_our_model, one_process, release_memory, save_checkpoint

    t0 = time.time()
    hf_dir, output = Path(hf_dir).expanduser(), Path(output).expanduser()
    doc = read_config(hf_dir)
    bridge = bridge_for_hf(doc, str(hf_dir / "config.json"))
    hf = HFConfig(doc, str(hf_dir / "config.json"))
    m = bridge.to_model_config(hf)
    tok_rec = _hf_tokenizer_record(hf_dir)
    hf_vocab = int(hf.require("vocab_size"))
    m = dataclasses.replace(m, make_vocab_size_divisible_by=vocab_divisor(hf_vocab, int(tok_rec["vocab_size"])))
    try:
        m.validate()
    except ConfigError as exc:
        raise BridgeError(f"{hf_dir}/config.json gives a model we cannot build: {exc}") from None
    _check_output(output)
    reader = SafetensorsReader(hf_dir)
    mappings, tied_head = _plan_import(bridge, m, reader, hf_dir)
    if tied_head:  # a tied checkpoint that still stores the head: it must be the embedding
        emb_name = next(mp.hf[0] for mp in mappings if mp.ours == "embedding.word_embeddings.weight")
        if not torch.equal(reader.get("lm_head.weight"), reader.get(emb_name)):
            raise BridgeError(f"{hf_dir}: config.json has tie_word_embeddings=true but lm_head.weight differs from "
                              f"{emb_name}: the head is not tied (set tie_word_embeddings=false if it is its own)")
    dtypes = sorted({str(reader.get(mappings[0].hf[0]).dtype).replace("torch.", "")})
    tmp = _tmp_sibling(output)
    shutil.rmtree(tmp, ignore_errors=True)
    hf_record = {"model_type": bridge.model_type, "config": doc, "dtype": dtypes[0], "source": str(hf_dir.resolve())}
    summary = {"model_type": bridge.model_type, "checkpoint": str(output), "parity": None}
    try:
        with one_process():
            model = build_our_model(m, int(tok_rec["vocab_size"]), initialise=False)  # all overwritten next
            _fill(model, sorted(mappings, key=lambda mp: reader.shard_order(mp.hf)), reader.get, log)
            reader.close()
            saved = save_checkpoint(tmp, model, m, tok_rec, hf=hf_record)
            del model
            release_memory()
            if verify:
                tokens = parity.probe_tokens(int(tok_rec["vocab_size"]), seq=seq_len)
                model = build_our_model(m, int(tok_rec["vocab_size"]), checkpoint=saved)
                ours = parity.trace_ours(model, bridge, tokens)
                del model
                release_memory()
                summary["parity"] = _gate(ours, hf_dir, bridge, tokens, f"import of {hf_dir}", log)
        os.replace(saved, output)
    finally:
        reader.close()
        shutil.rmtree(tmp, ignore_errors=True)
    summary["seconds"] = time.time() - t0
    _say(log, f"[nemo-reason] imported {hf_dir} ({bridge.model_type}) -> {output} in {summary['seconds']:.1f} s")
    return summary


def _hf_special_ids(tok) -> Dict:
    return {"eos_token_id": int(tok.eod), "pad_token_id": int(tok.pad)}


def _write_tokenizer(ckpt: Path, out: Path, tok) -> None:
    """The checkpoint's tokenizer files into ``out``; a minimal tokenizer_config.json when it has
    none (a tokenizer trained here), so ``AutoTokenizer`` loads the folder."""
    copy_tokenizer_files(ckpt / "tokenizer", out)
    if (out / "tokenizer.json").is_file() and not (out / "tokenizer_config.json").is_file():
        inv = tok.inv_vocab
        eos = inv.get(int(tok.eod))
        pad = inv.get(int(tok.pad))
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "pad_token": pad,
               "model_max_length": 1 << 30}
        (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))


def hf_weights(model, model_cfg, bridge=None, dtype: torch.dtype = torch.float32):
    """``(HF name, tensor)`` of our one-process model, one mapping at a time, in the bridge's order
    (Megatron-Bridge's ``export_hf_weights``): what export writes, or weights to stream into an
    inference engine. ``bridge``: by default the one that matches ``model_cfg``."""
    from nemo_reason.bridge.megatron_side import canonical_tensors

    bridge = bridge or bridge_for_model(model_cfg)
    mappings = bridge.mappings(model_cfg)
    check_unique(mappings)
    ours = canonical_tensors(model)
    named = {mp.ours for mp in mappings}
    if set(ours) != named:
        raise BridgeError(f"the {bridge.model_type} mappings do not cover this model: unmapped "
                          f"{sorted(set(ours) - named)[:6]}, unknown {sorted(named - set(ours))[:6]}")
    for mp in mappings:
        try:
            parts = mp.to_hf(ours[mp.ours].detach())
        except MappingError as exc:
            raise BridgeError(str(exc)) from None
        for n, t in zip(mp.hf, parts):
            yield n, t.to(dtype).clone()


def export_hf(checkpoint, output, *, verify: bool = True, dtype: str = "auto", model_type: Optional[str] = None,
              max_shard_bytes: int = DEFAULT_SHARD_BYTES, seq_len: int = 32,
              log: Optional[Callable] = print) -> dict:
    """Convert our checkpoint (an ``iter_*`` folder, a ``checkpoints/`` folder or a step folder; any
    layout) into the Hugging Face folder ``output``; returns a summary like :func:`import_hf`'s."""
    from nemo_reason.bridge import parity
    from nemo_reason.bridge.megatron_side import build_our_model, canonical_tensors, one_process, release_memory
    from nemo_reason.checkpoint.commands import resolve_checkpoint
    from nemo_reason.checkpoint.meta import load_tokenizer, read_meta
    from nemo_reason.models.vocab import padded_vocab_size

    t0 = time.time()
    ckpt, output = resolve_checkpoint(str(checkpoint)), Path(output).expanduser()
    info = read_meta(ckpt)
    if info.model is None:
        raise BridgeError(f"{ckpt}: the checkpoint records no model config: cannot export it")
    m = info.model
    hf_rec = info.extra.get("hf") or {}
    bridge = bridge_for_model(m, model_type or hf_rec.get("model_type"))
    bridge.check_export(m)
    if dtype == "auto":
        dtype = hf_rec.get("dtype") or "float32"
    if dtype not in _DTYPES:
        raise BridgeError(f"--dtype {dtype!r}: use auto, fp32, bf16 or fp16")
    out_dtype = _DTYPES[dtype]
    _check_output(output)
    tok = load_tokenizer(ckpt)
    vocab = padded_vocab_size(int(tok.vocab_size), m.make_vocab_size_divisible_by, 1)
    mappings = bridge.mappings(m)
    check_unique(mappings)
    hf_cfg = {k: v for k, v in (hf_rec.get("config") or {}).items() if k not in ("transformers_version",)}
    hf_cfg.update(_hf_special_ids(tok) if not hf_rec else {})
    hf_cfg.update(bridge.to_hf_config(m, vocab))
    name = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[out_dtype]
    hf_cfg.update(torch_dtype=name, dtype=name)
    tmp = _tmp_sibling(output)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    summary = {"model_type": bridge.model_type, "output": str(output), "parity": None, "dtype": name}
    try:
        with one_process():
            model = build_our_model(m, int(tok.vocab_size), checkpoint=ckpt)
            ours = canonical_tensors(model)
            writer = SafetensorsWriter(tmp, max_shard_bytes)
            for n, t in hf_weights(model, m, bridge, out_dtype):
                writer.add(n, t)
            shards = writer.close()
            del writer
            release_memory()
            (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2, sort_keys=True))
            _write_tokenizer(ckpt, tmp, tok)
            if verify:
                tokens = parity.probe_tokens(int(tok.vocab_size), seq=seq_len)
                if out_dtype != torch.float32:  # compare against what was written
                    with torch.no_grad():
                        for t in ours.values():
                            t.copy_(t.to(out_dtype).to(t.dtype))
                trace = parity.trace_ours(model, bridge, tokens)
                del model, ours
                release_memory()
                summary["parity"] = _gate(trace, tmp, bridge, tokens, f"export of {ckpt}", log)
            else:
                del model, ours
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary.update(seconds=time.time() - t0, shards=len(shards))
    _say(log, f"[nemo-reason] exported {ckpt} -> {output} ({bridge.model_type}, {name}, {len(shards)} shard(s)) "
              f"in {summary['seconds']:.1f} s")
    return summary
