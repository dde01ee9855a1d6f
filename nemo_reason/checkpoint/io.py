"""Megatron ``dist_checkpointing`` save/load with atomic publish, verification and resume discovery.

Layout of one step's checkpoints::

    <run.dir>/<step>/checkpoints/
        iter_0000100/            # complete: dist_checkpointing files + config.yaml + train_state.json
            complete.json        #   the marker: sizes and CRC-32 of every file below (marker.py)
            meta.json            #   architecture, tokenizer, tokens, parameters (meta.py)
            tokenizer/           #   a copy of the tokenizer's files
            rng/rank_00000.pt    # per-rank RNG state, restored only when the layout is unchanged
            source/rank_00000.pt # per-rank batch-source state (GRPO's prompt stream, rollout), when any
        latest                   # text: "100" (a hint; discovery never trusts it alone)
        .tmp_iter_0000200/       # a save in progress (or one that crashed): never loaded
        corrupt/iter_0000150/    # a checkpoint that failed verification, set aside (never deleted)

A save writes into ``.tmp_iter_*``; each rank checksums the files it wrote; after every rank has
finished, rank 0 writes config.yaml, train_state.json, meta.json and the tokenizer copy, then the
marker ``complete.json`` (listing every file with its size and checksum) and renames the folder
into place (an atomic rename on POSIX). Discovery only accepts ``iter_*`` folders that contain the
marker, so a crash or kill at any moment leaves no checkpoint that looks complete; resume
(:func:`find_resumable`) also verifies them against the marker, newest first, and sets aside any
that was damaged after publish. Checkpoints are torch_dist (sharded), so a checkpoint saved at one
TP/PP/DP layout loads at another; model weights and the (plain) optimizer state reshard.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from torch.distributed.checkpoint import CheckpointException

from nemo_reason.checkpoint import marker as _marker
from nemo_reason.checkpoint import meta as _meta
# Discovery names are re-exported: callers import them from here.
from nemo_reason.checkpoint.marker import (MARKER, describe_problems, iter_dir_name, iter_step,  # noqa: F401
                                           list_complete)
from nemo_reason.config.errors import ConfigError

CORRUPT_DIR = "corrupt"
_NONE, _FAILED = -1, -2
# Checkpoints rank 0 just verified in find_resumable (path, marker mtime): the load() that follows
# does not read them a second time.
_VERIFIED: set = set()


@dataclass
class TrainState:
    step: int
    consumed_samples: int
    layout: dict


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _from_rank0(value: int) -> int:
    """Rank 0's ``value`` on every rank (a decision only rank 0 made: it read the files)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    from nemo_reason.backend.dist import device_for, read_env

    t = torch.tensor([value], dtype=torch.int64, device=device_for(read_env().local_rank))
    dist.broadcast(t, src=0)
    return int(t.item())


def find_latest(ckpt_root: str | os.PathLike) -> Optional[Path]:
    """The newest complete checkpoint (marker present), not verified; see :func:`find_resumable`."""
    done = list_complete(ckpt_root)
    return done[-1] if done else None


def _verified_key(path: Path):
    try:
        return str(path.resolve()), (path / MARKER).stat().st_mtime_ns
    except OSError:
        return None


def _set_aside(path: Path) -> Path:
    dest_dir = path.parent / CORRUPT_DIR
    dest_dir.mkdir(exist_ok=True)
    dest, n = dest_dir / path.name, 1
    while dest.exists():
        dest, n = dest_dir / f"{path.name}.{n}", n + 1
    os.replace(path, dest)
    return dest


def _select_resumable(root: Path, checksums: bool) -> Optional[Path]:
    """Rank 0: the newest complete checkpoint that verifies; damaged newer ones set aside."""
    bad = []
    for path in reversed(list_complete(root)):
        ok, problems = _marker.verify(path, checksums=checksums)
        if ok is False:
            bad.append((path, problems))
            continue
        for p, probs in bad:
            dest = _set_aside(p)
            print(f"[nemo-reason] checkpoint {p} fails verification ({describe_problems(p, probs)}); "
                  f"set aside as {dest}", flush=True)
        if bad:
            print(f"[nemo-reason] resuming from {path}, the newest checkpoint that verifies", flush=True)
            _write_latest(root, iter_step(path))
        if ok:
            key = _verified_key(path)
            if key:
                _VERIFIED.add(key)
        return path
    if bad:
        named = "; ".join(describe_problems(p, probs) for p, probs in bad)
        raise ConfigError(f"{root}: none of its {len(bad)} complete checkpoint(s) verifies ({named}). They are left "
                          f"in place: restore them from a copy, or move them out of {root} to run this step from "
                          "scratch")
    return None


def find_resumable(ckpt_root: str | os.PathLike, checksums: bool = True) -> Optional[Path]:
    """The checkpoint to resume from: the newest complete one that verifies against its marker
    (sizes, and CRC-32 with ``checksums``), or None when there is none. Call it on every rank:
    rank 0 reads and verifies, moves each damaged newer checkpoint to ``<root>/corrupt/`` saying so,
    and every rank gets rank 0's choice (a broadcast, so ranks on other nodes need not see the
    renames yet). Checkpoints written before markers held checksums are accepted as they are.
    ConfigError (on every rank) when complete checkpoints exist but none verifies."""
    root = Path(ckpt_root)
    code, error = _NONE, None
    if _rank() == 0:
        try:
            chosen = _select_resumable(root, checksums)
            code = _NONE if chosen is None else iter_step(chosen)
        except ConfigError as exc:
            code, error = _FAILED, exc
    code = _from_rank0(code)
    if code == _FAILED:
        raise error or ConfigError(f"{root}: no complete checkpoint verifies (rank 0 names them)")
    return None if code == _NONE else root / iter_dir_name(code)


# The distributed optimizer's default sharding ("fully_sharded_model_space") fails in
# megatron-core 0.16.1 with "flattened_range is not supported"; "fully_reshardable" works and
# reshards across DP/TP/PP changes.
SHARDING_METADATA = {"distrib_optim_sharding_type": "fully_reshardable", "singleton_local_shards": False}


def _model_sharded_state_dict(model_chunks) -> dict:
    sd = {}
    for i, chunk in enumerate(model_chunks):
        module = getattr(chunk, "module", chunk)
        key = "model" if len(model_chunks) == 1 else f"model{i}"
        sd[key] = module.sharded_state_dict(metadata=dict(SHARDING_METADATA))
    return sd


def _prepare_optimizer_for_load(optimizer) -> None:
    """torch AdamW (Megatron's fallback without apex/TE) has no per-parameter state before its
    first step; give it the state (moments and ``step``) that the checkpoint will fill in."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        init = getattr(opt, "init_state_fn", None)
        if inner is None or init is None:
            continue
        init(inner, getattr(opt, "config", None))
        if isinstance(inner, (torch.optim.AdamW, torch.optim.Adam)):
            for group in inner.param_groups:
                for p in group["params"]:
                    inner.state[p].setdefault("step", torch.tensor(0.0))


def _unshare_adam_steps(optimizer) -> None:
    """Megatron restores torch AdamW's per-parameter ``step`` from one tensor shared by every
    parameter (distrib_optimizer.py:817-825); AdamW increments it in place per parameter, so
    after a reload the bias correction would advance by the number of parameters per step.
    Give every parameter its own copy."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            continue
        for state in inner.state.values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].clone()


def layout() -> dict:
    return {
        "tp": parallel_state.get_tensor_model_parallel_world_size(),
        "pp": parallel_state.get_pipeline_model_parallel_world_size(),
        "dp": parallel_state.get_data_parallel_world_size(),
        "cp": parallel_state.get_context_parallel_world_size(),
        "world": dist.get_world_size() if dist.is_initialized() else 1,
    }


# State-dict tensors that are buffers, not parameters (MoE router statistics and aux-loss-free bias).
_BUFFER_SUFFIXES = ("expert_bias", "local_tokens_per_expert")


def _stored_param_count(ckpt_dir: Path) -> Optional[int]:
    """Parameters the checkpoint holds (global shapes from its metadata: every layout, padded
    vocabulary included), or None when the metadata cannot be read."""
    try:
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        md = FileSystemReader(str(ckpt_dir)).read_metadata()
    except Exception:  # noqa: BLE001 - a count for display; the save itself already succeeded
        return None
    return sum(math.prod(item.size) for key, item in md.state_dict_metadata.items()
               if isinstance(item, TensorStorageMetadata) and not key.startswith("optimizer")
               and not key.endswith(_BUFFER_SUFFIXES))


def save(ckpt_root: str | os.PathLike, step: int, consumed_samples: int, model_chunks, optimizer,
         scheduler, config_yaml: str, rng_state: dict, keep_last: int = 0,
         meta: Optional[dict] = None, source_state: Optional[dict] = None) -> Path:
    """Save a complete checkpoint of step ``step``; returns its folder.

    ``meta`` (see :func:`nemo_reason.checkpoint.meta.build_meta`): the model config, tokenizer
    record, tokens, step type, fingerprint and anything else the caller adds; written as meta.json
    with the tokenizer's files copied in. ``source_state``: this rank's batch-source position
    (``source/rank_*.pt``, only when not empty; read back with :func:`load_source_state`). Rank 0
    logs one line per save."""
    root = Path(ckpt_root)
    final = root / iter_dir_name(step)
    tmp = root / f".tmp_{iter_dir_name(step)}"
    t0 = time.time()
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        (tmp / "rng").mkdir()
    _barrier()
    t_state = time.time()
    sd = _model_sharded_state_dict(model_chunks)
    sd["optimizer"] = optimizer.sharded_state_dict(dict(sd), is_loading=False, metadata=dict(SHARDING_METADATA))
    sd["scheduler"] = scheduler.state_dict()
    sd["train_state"] = {"step": step, "consumed_samples": consumed_samples}
    dist_checkpointing.save(sd, str(tmp), content_metadata=dict(SHARDING_METADATA))
    torch.save(rng_state, tmp / "rng" / f"rank_{_rank():05d}.pt")
    if source_state:
        (tmp / "source").mkdir(exist_ok=True)
        torch.save(source_state, tmp / "source" / f"rank_{_rank():05d}.pt")
    _marker.write_partial_manifest(tmp, _rank())
    lay = layout()
    _barrier()
    if _rank() == 0:
        (tmp / "config.yaml").write_text(config_yaml)
        saved_at = time.time()
        state = {"step": step, "consumed_samples": consumed_samples, "layout": lay,
                 "saved_at": saved_at, "save_seconds": saved_at - t_state}
        (tmp / "train_state.json").write_text(json.dumps(state, indent=1))
        params = None if (meta or {}).get("params") is not None else _stored_param_count(tmp)
        _meta.write_meta(tmp, meta, step=step, consumed_samples=consumed_samples, layout=lay, saved_at=saved_at,
                         params=params)
        written = _marker.write_marker(tmp, step)
        if final.exists():  # an older complete save of the same step (re-run): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_latest(root, step)
        if keep_last > 0:
            for old in list_complete(root)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        print(f"[nemo-reason] saved checkpoint {final} (step {step}, {time.time() - t0:.1f} s, "
              f"{_marker.human_bytes(written['total_bytes'])})", flush=True)
    _barrier()
    return final


def _write_latest(root: Path, step: int) -> None:
    tmp = root / ".latest.tmp"
    tmp.write_text(str(step))
    os.replace(tmp, root / "latest")


def _verify_before_load(ckpt_dir: Path) -> None:
    """Rank 0 checks sizes and checksums (unless it just did, in find_resumable); every rank stops
    with the same one-line error when they fail."""
    problems = []
    if _rank() == 0:
        key = _verified_key(ckpt_dir)
        if key in _VERIFIED:
            _VERIFIED.discard(key)  # once: a later load of the same folder reads it again
        else:
            _, problems = _marker.verify(ckpt_dir)
    if _from_rank0(1 if problems else 0):
        said = describe_problems(ckpt_dir, problems) if problems else "see rank 0's message"
        raise ConfigError(f"checkpoint {ckpt_dir} is damaged ({said}): it no longer matches what was saved; "
                          "restore it from a copy or give another checkpoint")


def _first_cause(exc: BaseException) -> str:
    """One line for an exception; for torch's CheckpointException (a wrapper holding each rank's
    failure and traceback) the first rank's own exception."""
    if isinstance(exc, CheckpointException) and exc.failures:
        rank, failure = sorted(exc.failures.items())[0]
        inner = failure[0] if isinstance(failure, tuple) else failure
        return f"rank {rank}: {_first_cause(inner)}"
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:240] + '...' if len(first) > 240 else first}"


def load(ckpt_dir: str | os.PathLike, model_chunks, optimizer, scheduler, load_optimizer: bool = True,
         model_cfg=None, vocab_size: Optional[int] = None, verify: bool = True) -> TrainState:
    """Load a complete checkpoint into the model (and optimizer/scheduler); returns its train state.

    ``model_cfg`` (a ModelConfig; with ``vocab_size``, the tokenizer's): first check that the
    checkpoint holds this architecture, naming every field that differs. ``verify``: check the
    files against the marker first (skipped for one :func:`find_resumable` just verified). Every
    failure is a ConfigError of one line naming the checkpoint."""
    ckpt_dir = Path(ckpt_dir)
    if not _marker.is_complete(ckpt_dir):
        raise ConfigError(f"{ckpt_dir} is not a complete checkpoint (no {MARKER}: a save that never finished, "
                          "or not a checkpoint folder); give an iter_* folder that holds one")
    if model_cfg is not None:
        _meta.check_architecture(ckpt_dir, model_cfg, vocab_size)
    if verify:
        _verify_before_load(ckpt_dir)
    try:
        sd = _model_sharded_state_dict(model_chunks)
        if load_optimizer:
            _prepare_optimizer_for_load(optimizer)
            sd["optimizer"] = optimizer.sharded_state_dict(dict(sd), is_loading=True,
                                                           metadata=dict(SHARDING_METADATA))
        sd["scheduler"] = scheduler.state_dict() if scheduler is not None else {}
        sd["train_state"] = {"step": 0, "consumed_samples": 0}
        loaded = dist_checkpointing.load(sd, str(ckpt_dir))
        for i, chunk in enumerate(model_chunks):
            module = getattr(chunk, "module", chunk)
            key = "model" if len(model_chunks) == 1 else f"model{i}"
            module.load_state_dict(loaded[key], strict=True)
    # torch's CheckpointException derives from BaseException, not Exception.
    except (Exception, CheckpointException) as exc:  # noqa: BLE001
        raise ConfigError(f"cannot load checkpoint {ckpt_dir}: {_first_cause(exc)} (damaged, or saved "
                          "from another model: `nemo-reason show-checkpoint PATH` verifies it and prints its "
                          "architecture)") from exc
    if load_optimizer:
        with torch.no_grad():
            optimizer.load_state_dict(loaded["optimizer"])
        _unshare_adam_steps(optimizer)
        if scheduler is not None:
            scheduler.load_state_dict(loaded["scheduler"])
    info = json.loads((ckpt_dir / "train_state.json").read_text())
    ts = loaded["train_state"]
    return TrainState(int(ts["step"]), int(ts["consumed_samples"]), info.get("layout", {}))


def load_rng(ckpt_dir: str | os.PathLike) -> Optional[dict]:
    """This rank's saved RNG state, or None when the layout changed since the save."""
    ckpt_dir = Path(ckpt_dir)
    info = json.loads((ckpt_dir / "train_state.json").read_text())
    if info.get("layout") != layout():
        return None
    path = ckpt_dir / "rng" / f"rank_{_rank():05d}.pt"
    return torch.load(path, weights_only=False) if path.is_file() else None


def load_source_state(ckpt_dir: str | os.PathLike) -> Optional[dict]:
    """This rank's saved batch-source state, or None when the checkpoint holds none. When the layout
    changed since the save, rank 0's, with ``"layout_changed": True`` (a source keeps what is
    global in it, e.g. a prompt position, and drops what was per rank)."""
    ckpt_dir = Path(ckpt_dir)
    folder = ckpt_dir / "source"
    if not folder.is_dir():
        return None
    info = json.loads((ckpt_dir / "train_state.json").read_text())
    same = info.get("layout") == layout()
    path = folder / f"rank_{(_rank() if same else 0):05d}.pt"
    if not path.is_file():
        return None
    state = torch.load(path, weights_only=False)
    return state if same else {**state, "layout_changed": True}
