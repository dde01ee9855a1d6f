"""The shared training loop: Megatron DDP + optimizer + pipeline schedules, checkpoints, metrics.

``train(cfg, ctx, step_dir, forward_step)`` runs one training step type (pretrain today; SFT and
distillation reuse it with their own ``forward_step``):

1. data (Megatron ``GPTDataset``) and model chunks (``GPTModel`` per virtual stage);
2. Megatron ``DistributedDataParallel`` and ``get_megatron_optimizer`` (distributed optimizer
   with ``optim.distributed``), Megatron's LR scheduler;
3. resume from the newest complete checkpoint of this step (model, optimizer, scheduler,
   consumed samples, and RNG when the layout is unchanged);
4. each step: ``get_forward_backward_func()`` over ``global_batch / (micro_batch * dp)``
   micro-batches (no pipelining, 1F1B or interleaved 1F1B by layout), optimizer step, scheduler step;
5. loss/lr/grad-norm/tokens-per-second/model-FLOPs/MFU logged, checkpoints every ``save_every`` and at the end.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.module import Float16Module
from megatron.core.utils import get_model_config

from nemo_reason.backend import dist as bdist
from nemo_reason.backend import peak as bpeak
from nemo_reason.checkpoint import io as ckpt
from nemo_reason.config.schema import RunConfig
from nemo_reason.config.store import flatten, to_yaml
from nemo_reason.data.loader import build_data, micro_batches
from nemo_reason.data.tokenizer import padded_vocab_size
from nemo_reason.models import build_model
from nemo_reason.planner.flops import flops_per_step_from_config
from nemo_reason.training.metrics import MetricsWriter
from nemo_reason.training import preemption
from nemo_reason.training.optimizer import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    checkpoint: Optional[Path]
    final_step: int
    last_loss: Optional[float]
    metrics: dict
    completed: bool = True


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


def _hook_schedule(cfg: RunConfig, model, optimizer) -> None:
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


def _reduce_loss(losses_reduced, key: str = "lm loss") -> Optional[float]:
    """Token-weighted mean loss over micro-batches and data-parallel ranks (last stage only
    holds losses; the all-reduce over the world makes it known everywhere). Each entry is a local
    ``[sum, count]``: context-parallel ranks add their sequence chunks up to the whole sequence, and
    tensor-parallel copies scale sum and count alike, so the ratio is the global token mean."""
    total = torch.zeros(2, dtype=torch.float64)
    for d in losses_reduced:
        if key in d:
            total += d[key].detach().to("cpu", torch.float64)
    total = total.to(_device())
    if dist.is_initialized():
        dist.all_reduce(total)
    return float(total[0] / total[1]) if total[1] > 0 else None


def _device():
    return bdist.device_for(bdist.read_env().local_rank)


def _iterators(dataset, consumed, mbs, dims_dp_rank, dp, chunks, total=None):
    its = [micro_batches(dataset, consumed, mbs, dims_dp_rank, dp, total) for _ in range(chunks)]
    return its[0] if chunks == 1 else its


def train(cfg: RunConfig, ctx, step_dir: Path, forward_step: Callable, init_checkpoint: Optional[Path] = None) -> TrainResult:
    rank = dist.get_rank() if dist.is_initialized() else 0
    dims = ctx.dims
    t = cfg.trainer
    dp = dims.dp
    num_micro = t.global_batch_size // (t.micro_batch_size * dp)
    data = build_data(cfg, dp)
    chunks = build_model(cfg, data.tokenizer.vocab_size)
    model = wrap_ddp(cfg, chunks)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    _hook_schedule(cfg, model, optimizer)
    router_stats = None
    if cfg.model.is_moe:
        from nemo_reason.training.moe_stats import RouterStats

        router_stats = RouterStats(chunks, cfg.model.num_layers, cfg.model.num_moe_experts, num_micro,
                                   cfg.parallel.sequence_parallel)
    ckpt_root = step_dir / "checkpoints"
    config_yaml = to_yaml(cfg)

    start_step, consumed = 0, 0
    latest = ckpt.find_latest(ckpt_root) if cfg.run.resume else None
    if latest is not None:
        state = ckpt.load(latest, model, optimizer, scheduler)
        start_step, consumed = state.step, state.consumed_samples
        rng = ckpt.load_rng(latest)
        if rng is not None:
            bdist.set_rng_state(rng)
        if rank == 0:
            print(f"[nemo-reason] resumed from {latest} (step {start_step}, {consumed} samples)", flush=True)
    elif init_checkpoint is not None:
        ckpt.load(init_checkpoint, model, optimizer, None, load_optimizer=False)
        if rank == 0:
            print(f"[nemo-reason] initialised weights from {init_checkpoint}", flush=True)

    padded = padded_vocab_size(data.tokenizer.vocab_size, cfg.model.make_vocab_size_divisible_by, cfg.parallel.tp)
    flops_per_step = flops_per_step_from_config(cfg, padded)
    # MFU's denominator, per rank (rank 0 logs): trainer.peak_tflops, the GPU's bf16 peak, or on CPU a
    # matmul probe measured once and cached.
    peak_tflops = bpeak.peak_tflops(t.peak_tflops, cfg.data.cache_dir) if rank == 0 else None
    tokens_per_step = t.global_batch_size * t.seq_length
    if rank == 0:
        n_params = sum(p.numel() for c in chunks for p in c.parameters())
        ent = (data.stats or {}).get("unigram_entropy_nats")
        print(f"[nemo-reason] {cfg.run.name}/{step_dir.name}: {dims.describe()} | params/rank {n_params:,} | "
              f"{num_micro} micro-batches of {t.micro_batch_size} x {t.seq_length} per step"
              + (f" | corpus unigram entropy {ent:.3f} nats" if ent else ""), flush=True)
        print(data.describe(start_step), flush=True)
    writer = MetricsWriter(step_dir, t.max_steps, start_step, enabled=rank == 0, progress=t.progress,
                           hparams=flatten(cfg) if start_step == 0 else None)

    if t.save_initial and start_step == 0:
        _sync_params(cfg, model)
        ckpt.save(ckpt_root, 0, 0, model, optimizer, scheduler, config_yaml, bdist.get_rng_state(),
                  keep_last=0)

    vpp = cfg.parallel.vpp or 1
    train_iter = _iterators(data.train, consumed, t.micro_batch_size, dims.dp_rank, dp, vpp)
    fwd_bwd = get_forward_backward_func()
    last_loss = None
    last_ckpt = latest
    step = start_step
    window_t0, window_steps = time.time(), 0
    preemption.install(cfg.launcher.preempt_signal)
    try:
        while step < t.max_steps:
            # The data switches phase inside the dataset (data/phases.py); this only announces it.
            switch = data.phase_switch(step)
            if switch and rank == 0:
                print(switch, flush=True)
            for m in model:
                m.zero_grad_buffer()
            optimizer.zero_grad()
            losses = fwd_bwd(
                forward_step_func=forward_step,
                data_iterator=train_iter,
                model=model if len(model) > 1 else model[0],
                num_microbatches=num_micro,
                seq_length=t.seq_length,
                micro_batch_size=t.micro_batch_size,
                decoder_seq_length=t.seq_length,
                forward_only=False,
            )
            update_ok, grad_norm, _ = optimizer.step()
            if update_ok:
                scheduler.step(increment=1)
            step += 1
            consumed += t.global_batch_size
            window_steps += 1
            loss = _reduce_loss(losses)
            last_loss = loss
            if step % t.log_every == 0 or step == t.max_steps:
                bdist.synchronize()
                elapsed = time.time() - window_t0
                record = {
                    "step": step,
                    "loss": loss,
                    "lr": optimizer.param_groups[0]["lr"],
                    "grad_norm": float(grad_norm) if grad_norm is not None else None,
                    "consumed_samples": consumed,
                    "tokens": consumed * t.seq_length,
                    "step_time_s": elapsed / window_steps,
                    "tokens_per_s": tokens_per_step * window_steps / elapsed,
                    "model_tflops_per_s_per_rank": flops_per_step * window_steps / elapsed / 1e12 / dims.world_size,
                    "mfu": (flops_per_step * window_steps / elapsed / 1e12 / dims.world_size / peak_tflops
                            if peak_tflops else None),
                    "skipped_update": not update_ok,
                }
                if data.phased:
                    record["phase"] = data.phase_at(step - 1).name
                if router_stats is not None:
                    record.update(router_stats.collect())
                if t.eval_every and step % t.eval_every == 0 and data.valid is not None:
                    record["eval_loss"] = evaluate(cfg, model, data.valid, dims, forward_step, step, num_micro)
                writer.log(record)
                window_t0, window_steps = time.time(), 0
            elif router_stats is not None:
                router_stats.skip_log()
            # Every rank takes part in the preemption flag's all-reduce at every step but the last.
            preempted = step < t.max_steps and preemption.agreed()
            exiting = preempted or (bool(t.exit_interval) and step < t.max_steps and step % t.exit_interval == 0)
            if (t.save_every and step % t.save_every == 0) or step == t.max_steps or exiting:
                _sync_params(cfg, model)
                last_ckpt = ckpt.save(ckpt_root, step, consumed, model, optimizer, scheduler, config_yaml,
                                      bdist.get_rng_state(), keep_last=t.keep_last)
                window_t0 = time.time()
            if exiting:
                if preempted:
                    preemption.record(ctx.run_dir, ctx.step_name, step, last_ckpt)
                elif rank == 0:
                    print(f"[nemo-reason] exit_interval reached at step {step}; re-run the same command to resume",
                          flush=True)
                break
    finally:
        writer.close()
    return TrainResult(last_ckpt, step, last_loss, {"loss": last_loss}, completed=step >= t.max_steps)


def _sync_params(cfg: RunConfig, model) -> None:
    # With overlapped param all-gather the parameters lag one step behind the optimizer.
    if cfg.optim.overlap_param_gather and cfg.optim.distributed:
        for m in model:
            m.start_param_sync(force_sync=True)


@torch.no_grad()
def evaluate(cfg: RunConfig, model, dataset, dims, forward_step, step: int, num_micro: int) -> Optional[float]:
    """Mean validation loss over ``eval_iters`` global batches (a fixed slice per evaluation)."""
    t = cfg.trainer
    for m in model:
        m.eval()
    evals_done = step // t.eval_every - 1
    start = evals_done * t.eval_iters * t.global_batch_size
    its = _iterators(dataset, start, t.micro_batch_size, dims.dp_rank, dims.dp, cfg.parallel.vpp or 1,
                     total=start + t.eval_iters * t.global_batch_size)
    fwd_bwd = get_forward_backward_func()
    losses = []
    for _ in range(t.eval_iters):
        losses += fwd_bwd(forward_step_func=forward_step, data_iterator=its,
                          model=model if len(model) > 1 else model[0], num_microbatches=num_micro,
                          seq_length=t.seq_length, micro_batch_size=t.micro_batch_size,
                          decoder_seq_length=t.seq_length, forward_only=True)
    for m in model:
        m.train()
    return _reduce_loss(losses)
