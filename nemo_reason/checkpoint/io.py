"""Megatron ``dist_checkpointing`` save/load with atomic publish and resume discovery.

Layout of one step's checkpoints::

    <run.dir>/<step>/checkpoints/
        iter_0000100/            # complete: dist_checkpointing files + config.yaml + train_state.json
            rng/rank_00000.pt    # per-rank RNG state, restored only when the layout is unchanged
        latest                   # text: "100" (a hint; discovery never trusts it alone)
        .tmp_iter_0000200/       # a save in progress (or one that crashed): never loaded

A save writes into ``.tmp_iter_*``; after every rank has finished, rank 0 writes the marker
``complete.json`` and renames the folder into place (an atomic rename on POSIX). Discovery only
accepts ``iter_*`` folders that contain the marker, so a crash or kill at any moment leaves no
checkpoint that looks complete. Checkpoints are torch_dist (sharded), so a checkpoint saved at
one TP/PP/DP layout loads at another; model weights and the (plain) optimizer state reshard.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state

MARKER = "complete.json"
_ITER_RE = re.compile(r"^iter_(\d{7,})$")


def iter_dir_name(step: int) -> str:
    return f"iter_{step:07d}"


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


def list_complete(ckpt_root: str | os.PathLike) -> List[Path]:
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _ITER_RE.match(p.name)
        if m and p.is_dir() and (p / MARKER).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def find_latest(ckpt_root: str | os.PathLike) -> Optional[Path]:
    done = list_complete(ckpt_root)
    return done[-1] if done else None


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


def save(ckpt_root: str | os.PathLike, step: int, consumed_samples: int, model_chunks, optimizer,
         scheduler, config_yaml: str, rng_state: dict, keep_last: int = 0) -> Path:
    """Save a complete checkpoint of step ``step``; returns its folder."""
    root = Path(ckpt_root)
    final = root / iter_dir_name(step)
    tmp = root / f".tmp_{iter_dir_name(step)}"
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        (tmp / "rng").mkdir()
    _barrier()
    t0 = time.time()
    sd = _model_sharded_state_dict(model_chunks)
    sd["optimizer"] = optimizer.sharded_state_dict(dict(sd), is_loading=False, metadata=dict(SHARDING_METADATA))
    sd["scheduler"] = scheduler.state_dict()
    sd["train_state"] = {"step": step, "consumed_samples": consumed_samples}
    dist_checkpointing.save(sd, str(tmp), content_metadata=dict(SHARDING_METADATA))
    torch.save(rng_state, tmp / "rng" / f"rank_{_rank():05d}.pt")
    _barrier()
    if _rank() == 0:
        (tmp / "config.yaml").write_text(config_yaml)
        state = {"step": step, "consumed_samples": consumed_samples, "layout": layout(),
                 "saved_at": time.time(), "save_seconds": time.time() - t0}
        (tmp / "train_state.json").write_text(json.dumps(state, indent=1))
        (tmp / MARKER).write_text(json.dumps({"step": step}))
        if final.exists():  # an older complete save of the same step (re-run): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_latest(root, step)
        if keep_last > 0:
            for old in list_complete(root)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def _write_latest(root: Path, step: int) -> None:
    tmp = root / ".latest.tmp"
    tmp.write_text(str(step))
    os.replace(tmp, root / "latest")


def load(ckpt_dir: str | os.PathLike, model_chunks, optimizer, scheduler, load_optimizer: bool = True) -> TrainState:
    """Load a complete checkpoint into the model (and optimizer/scheduler); returns its train state."""
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / MARKER).is_file():
        raise FileNotFoundError(f"{ckpt_dir} is not a complete checkpoint (no {MARKER})")
    sd = _model_sharded_state_dict(model_chunks)
    if load_optimizer:
        _prepare_optimizer_for_load(optimizer)
        sd["optimizer"] = optimizer.sharded_state_dict(dict(sd), is_loading=True, metadata=dict(SHARDING_METADATA))
    sd["scheduler"] = scheduler.state_dict() if scheduler is not None else {}
    sd["train_state"] = {"step": 0, "consumed_samples": 0}
    loaded = dist_checkpointing.load(sd, str(ckpt_dir))
    for i, chunk in enumerate(model_chunks):
        module = getattr(chunk, "module", chunk)
        key = "model" if len(model_chunks) == 1 else f"model{i}"
        module.load_state_dict(loaded[key], strict=True)
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
