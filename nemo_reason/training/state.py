"""The train state a training step builds once: model chunks, DDP, optimizer, schedule, resume.

``build_train_state(cfg, ctx, vocab_size, ...)`` is what Megatron-LM's ``setup_model_and_optimizer``
does, for any step type:

1. the model chunks of this rank (one per virtual pipeline stage) from ``model_cfg`` (the input
   checkpoint's architecture when it records one: a pruned model arrives with its own shape), through
   :func:`nemo_reason.models.build_model`;
2. Megatron ``Float16Module`` (bf16/fp16) and ``DistributedDataParallel`` around each chunk, the
   Megatron optimizer (plain or distributed) and LR scheduler, wired into the schedule config;
3. where it starts: the newest verified checkpoint of this step (model, optimizer, scheduler,
   consumed samples, RNG when the layout is unchanged), else the weights of ``init_checkpoint``
   (the previous step's output or ``run.init_checkpoint``), else the seed.

What it leaves out: data (the step passes a batch source to the loop) and the loss (the step's
``forward_step``). The layout comes from ``ctx.dims`` (one object, built once by ``parallel/``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import torch.distributed as dist
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.transformer.module import Float16Module
from megatron.core.utils import get_model_config

from nemo_reason.backend import dist as bdist
from nemo_reason.checkpoint import io as ckpt
from nemo_reason.config.schema import RunConfig
from nemo_reason.models import build_model
from nemo_reason.training.optimizer import build_optimizer, build_scheduler


@dataclass
class TrainState:
    """Everything a step trains, and where it stands. ``model`` is what Megatron's schedules take
    (DDP-wrapped chunks); ``chunks`` are the bare ``GPTModel``/``MambaModel`` chunks."""

    cfg: RunConfig                 # the run config as this step sees it, with model = the built architecture
    chunks: list
    model: list
    optimizer: object
    scheduler: object
    step: int = 0                  # optimizer steps done
    consumed: int = 0              # samples consumed
    resumed_from: Optional[Path] = None
    initialised_from: Optional[Path] = None
    num_params: int = 0            # parameters of this rank's chunks
    notes: List[str] = field(default_factory=list)

    @property
    def model_or_chunk(self):
        """What ``get_forward_backward_func()`` takes: the one chunk, or the list for VPP."""
        return self.model if len(self.model) > 1 else self.model[0]

    def sync_params(self) -> None:
        """With overlapped param all-gather the parameters lag one step behind the optimizer:
        force a gather before reading or saving them."""
        o = self.cfg.optim
        if o.overlap_param_gather and o.distributed:
            for m in self.model:
                m.start_param_sync(force_sync=True)


def wrap_ddp(cfg: RunConfig, chunks):
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=cfg.optim.overlap_grad_reduce,
        overlap_param_gather=cfg.optim.overlap_param_gather,
        use_distributed_optimizer=cfg.optim.distributed,
        check_for_nan_in_grad=True,
        average_in_collective=False,
    )
    tcfg = chunks[0].config
    if tcfg.bf16 or tcfg.fp16:
        # As Megatron-LM's get_model: the whole module in half precision (norms included), with
        # inputs cast in and outputs cast back to fp32 by Megatron's Float16Module.
        chunks = [Float16Module(tcfg, c) for c in chunks]
    model = [
        DistributedDataParallel(config=tcfg, ddp_config=ddp_config, module=c,
                                # Megatron-LM: only the first chunk's buckets overlap with backward.
                                disable_bucketing=(i > 0))
        for i, c in enumerate(chunks)
    ]
    for m in model:
        m.broadcast_params()
    return model


def hook_schedule(cfg: RunConfig, model, optimizer) -> None:
    """Wire DDP into the schedule config, as Megatron-LM's training loop does."""
    config = get_model_config(model[0])
    config.grad_scale_func = optimizer.scale_loss
    config.finalize_model_grads_func = finalize_model_grads
    no_sync = [m.no_sync for m in model]
    config.no_sync_func = no_sync[0] if len(model) == 1 else no_sync
    if cfg.optim.overlap_grad_reduce:
        sync = [m.start_grad_sync for m in model]
        config.grad_sync_func = sync[0] if len(model) == 1 else sync
    if cfg.optim.overlap_param_gather and cfg.optim.distributed:
        psync = [m.start_param_sync for m in model]
        config.param_sync_func = psync[0] if len(model) == 1 else psync


def architecture_from(cfg: RunConfig, checkpoint: Optional[Path]) -> tuple:
    """The model config to build: the checkpoint's recorded architecture when it has one (its
    shape may differ from the recipe's, e.g. after pruning), else the recipe's. Returns
    ``(cfg with that model, note or None)``."""
    if checkpoint is None:
        return cfg, None
    from nemo_reason.checkpoint import meta as cmeta

    try:
        recorded = cmeta.model_config_of(checkpoint)
    except FileNotFoundError:
        return cfg, None
    diff = cmeta.architecture_diff(recorded, cfg.model) + cmeta.adopted_numerics(recorded, cfg.model)
    if not diff:
        return cfg, None
    # Architecture from the checkpoint; everything else (backend, dropout, ...) from this step's config.
    model = cmeta.with_architecture(cfg.model, recorded)
    note = (f"model architecture from {checkpoint}: " + ", ".join(f"{k}={a} (recipe: {b})" for k, a, b in diff))
    return dataclasses.replace(cfg, model=model), note


def build_train_state(cfg: RunConfig, ctx, vocab_size: int, *, ckpt_root: Optional[Path] = None,
                      init_checkpoint: Optional[Path] = None, build_optimizer_state: bool = True,
                      prepare_chunks: Optional[Callable] = None) -> TrainState:
    """Build the model, DDP, optimizer and schedule of one step, then resume or initialise.

    ``ckpt_root``: this step's checkpoint folder (resume from its newest verified checkpoint when
    ``run.resume``); ``init_checkpoint``: weights to start from otherwise (any layout: resharded on
    load). ``build_optimizer_state=False`` builds a frozen model (a teacher, an evaluated model):
    no DDP, no optimizer. ``prepare_chunks(chunks, resuming) -> chunks`` transforms the bare chunks
    before DDP and loading (the distillation wrapper around a student); ``resuming``: the weights will
    come from this step's own checkpoint, not ``init_checkpoint``."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    latest = None
    if build_optimizer_state and ckpt_root is not None and cfg.run.resume:
        latest = ckpt.find_resumable(ckpt_root)
    cfg, note = architecture_from(cfg, latest or init_checkpoint)
    chunks = build_model(cfg, vocab_size, ctx.dims)
    num_params = sum(p.numel() for c in chunks for p in c.parameters())
    if prepare_chunks is not None:
        chunks = prepare_chunks(chunks, latest is not None)
    if not build_optimizer_state:
        for c in chunks:
            c.eval()
            c.requires_grad_(False)
        tcfg = chunks[0].config
        frozen = [Float16Module(tcfg, c) for c in chunks] if (tcfg.bf16 or tcfg.fp16) else chunks
        state = TrainState(cfg, chunks, frozen, None, None, num_params=num_params)
        if note:
            state.notes.append(note)
        if init_checkpoint is not None:
            ckpt.load(init_checkpoint, frozen, None, None, load_optimizer=False, model_cfg=cfg.model,
                      vocab_size=vocab_size)
            state.initialised_from = init_checkpoint
        return state
    model = wrap_ddp(cfg, chunks)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    hook_schedule(cfg, model, optimizer)
    state = TrainState(cfg, chunks, model, optimizer, scheduler, num_params=num_params)
    if note:
        state.notes.append(note)
    if latest is not None:
        # find_resumable has just verified it.
        loaded = ckpt.load(latest, model, optimizer, scheduler, model_cfg=cfg.model, vocab_size=vocab_size,
                           verify=False)
        state.step, state.consumed, state.resumed_from = loaded.step, loaded.consumed_samples, latest
        rng = ckpt.load_rng(latest)
        if rng is not None:
            bdist.set_rng_state(rng)
        if rank == 0:
            print(f"[nemo-reason] resumed from {latest} (step {state.step}, {state.consumed} samples)", flush=True)
    elif init_checkpoint is not None:
        ckpt.load(init_checkpoint, model, optimizer, None, load_optimizer=False, model_cfg=cfg.model,
                  vocab_size=vocab_size)
        state.initialised_from = init_checkpoint
        if rank == 0:
            print(f"[nemo-reason] initialised weights from {init_checkpoint}", flush=True)
    return state


def build_frozen_state(cfg: RunConfig, ctx) -> tuple:
    """``(state, tokenizer)`` of a step that runs the model of its input checkpoint without training
    it (evaluation, a distillation teacher): the architecture and the tokenizer as the checkpoint
    records them, weights loaded, no DDP or optimizer."""
    from nemo_reason.checkpoint.meta import load_tokenizer

    ckpt_dir = ctx.require_input()
    tok = load_tokenizer(ckpt_dir, cfg.data.cache_dir)
    return build_train_state(cfg, ctx, tok.vocab_size, init_checkpoint=ckpt_dir, build_optimizer_state=False), tok
