"""Our side of a conversion: a one-process Megatron world, our model in it, its tensors by canonical name.

- :func:`one_process` makes this process a world of one (a process group, Megatron parallel state at
  size 1, seed), as ``nemo-reason eval`` does, or reuses the one a caller (a test) already built.
- :func:`build_our_model` builds the bare ``GPTModel``/``MambaModel`` of a ModelConfig at fp32 with
  the local backend (one set of module names for the mappings, whatever the machine: SequentialMLP
  experts, separate norms; the checkpoint it writes loads into either backend), weights from the seed
  (import fills them) or from a checkpoint of any layout (``dist_checkpointing`` reshards on load;
  export reads it this way).
- :func:`canonical_tensors` names every parameter (and persistent buffer) the way the checkpoint
  stores it: the local backend's separate norms ``input_layernorm.*`` / ``pre_mlp_layernorm.*`` under
  the fused Transformer Engine names (``self_attention.linear_qkv.layer_norm_*``, ...), as each
  layer's ``sharded_state_dict_keys_map`` says; the te backend's names are canonical already.
- :func:`save_checkpoint` writes our self-describing checkpoint (:func:`nemo_reason.checkpoint.io.save`:
  dist_checkpointing files, meta.json with the ModelConfig and the tokenizer record, the
  tokenizer's files, the completion marker) with no optimizer state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Dict, Optional

import torch

from nemo_reason.config.model import ModelConfig


@contextlib.contextmanager
def one_process(seed: int = 1234):
    """A one-rank world for the duration (reused when one is already up)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    if dist.is_initialized() and parallel_state.model_parallel_is_initialized():
        if dist.get_world_size() != 1:
            raise RuntimeError("the bridge converts in a one-process world; this one has "
                               f"{dist.get_world_size()} ranks")
        yield
        return
    from nemo_reason.backend import dist as bdist
    from nemo_reason.backend import prepare
    from nemo_reason.launch.ports import free_port
    from nemo_reason.parallel import ParallelDims
    from nemo_reason.worker import quiet_libraries

    quiet_libraries()
    saved = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    bdist.init_process_group()
    try:
        prepare("local")
        ParallelDims(1, 1, 1, 1, None, None, 1).init()
        bdist.seed_everything(seed)
        yield
    finally:
        ParallelDims.destroy()
        bdist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_config(model_cfg: ModelConfig):
    """The RunConfig our model is built from: this architecture, fp32, one process."""
    from nemo_reason.config.schema import RunConfig

    cfg = RunConfig()
    return dataclasses.replace(cfg, model=model_cfg, trainer=dataclasses.replace(cfg.trainer, precision="fp32"))


def build_our_model(model_cfg: ModelConfig, vocab_size: int, checkpoint: Optional[Path] = None,
                    initialise: Optional[bool] = None):
    """Our bare model (one chunk) in the current one-process world, eval mode, fp32; weights from
    ``checkpoint`` (any layout) when given. ``vocab_size``: the tokenizer's (padded per
    ``model_cfg.make_vocab_size_divisible_by``). ``initialise``: Megatron's random initialisation
    (default: only without a checkpoint); off when every weight is overwritten next, as on import,
    since Megatron's CPU initialisation builds a transient full-size copy of each weight."""
    from nemo_reason.parallel import ParallelDims
    from nemo_reason.stages import StepContext
    from nemo_reason.training.state import build_train_state

    # The local backend everywhere: one set of module names (SequentialMLP experts, not TE's grouped
    # ones) for the mappings; the checkpoint it writes loads into either backend.
    if initialise is None:
        initialise = checkpoint is None
    cfg = run_config(dataclasses.replace(model_cfg, backend="local", perform_initialization=initialise))
    ctx = StepContext(ParallelDims.from_config(cfg.parallel, 1), Path("."), Path("."), "bridge")
    state = build_train_state(cfg, ctx, vocab_size, init_checkpoint=checkpoint, build_optimizer_state=False)
    return state.chunks[0]


def canonical_tensors(model) -> Dict[str, torch.Tensor]:
    """``{canonical checkpoint name: live tensor}`` of every parameter and persistent buffer."""
    renames = []  # (module prefix + local key prefix, module prefix + canonical key prefix)
    for prefix, module in model.named_modules():
        keys_map = getattr(getattr(module, "submodules_config", None), "sharded_state_dict_keys_map", None) or {}
        base = f"{prefix}." if prefix else ""
        renames += [(base + k, base + v) for k, v in keys_map.items()]
    out: Dict[str, torch.Tensor] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if name.endswith("_extra_state") or not isinstance(t, torch.Tensor):
            continue
        for old, new in renames:
            if name.startswith(old):
                name = new + name[len(old):]
                break
        out[name] = t
    return out


class _NoOptimizer:
    """What :func:`nemo_reason.checkpoint.io.save` needs of an optimizer when there is none to save
    (a converted model starts every step with a fresh optimizer)."""

    def sharded_state_dict(self, model_sharded_state_dict, is_loading=False, metadata=None):
        return {}


class _NoScheduler:
    def state_dict(self):
        return {}


def save_checkpoint(root: Path, model, model_cfg: ModelConfig, tokenizer_record: dict, **meta_extra) -> Path:
    """Write our checkpoint of ``model`` under ``root`` (``root/iter_0000000``, step 0); returns it."""
    from nemo_reason.checkpoint import io
    from nemo_reason.checkpoint.meta import build_meta
    from nemo_reason.config.store import to_yaml

    meta = build_meta(model_cfg, tokenizer_record, step_type="import-hf", tokens=0, **meta_extra)
    return io.save(root, 0, 0, [model], _NoOptimizer(), _NoScheduler(), to_yaml(run_config(model_cfg)),
                   rng_state={}, meta=meta)


def release_memory() -> None:
    """Give the memory of a freed model back to the system: the C allocator keeps freed blocks
    for reuse, and the next model (the transformers one in the parity gate) need not fit in them,
    so without this the gate's peak would be two models, not one (glibc's ``malloc_trim``; a
    no-op where it does not exist)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
