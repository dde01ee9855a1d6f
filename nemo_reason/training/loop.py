"""The outer training loop every training step shares: steps, logging, eval, checkpoints, preemption.

``run_loop(state, ctx, forward_step, batches, ...)`` advances a :class:`~nemo_reason.training.state.TrainState`
to ``max_steps`` optimizer steps. It knows nothing of where batches come from or what the loss is:

- ``batches`` (a :class:`BatchSource`) hands out each step's micro-batches: the pretraining
  sampler over Megatron datasets, SFT conversations, GRPO rollouts scored a moment ago, ...;
- ``forward_step`` is any Megatron forward step; every ``[sum, count]`` metric it reports is
  reduced exactly (:func:`~nemo_reason.training.step.reduce_metrics`) and logged;
- ``evaluate(state)`` (optional) returns eval metrics every ``trainer.eval_every`` steps.

Per step: :func:`~nemo_reason.training.step.train_step`; every ``log_every`` a record (metrics, lr,
grad norm, tokens/s, model TFLOP/s, MFU) to ``metrics.jsonl``, TensorBoard and the progress line;
the batch source's own state (:meth:`BatchSource.state_dict`) rides with every checkpoint and is
handed back on resume; a checkpoint every ``save_every``, at the end, at ``exit_interval`` and on a preemption signal
(then the run exits 75 and the same command resumes). At the end, one summary line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

import torch.distributed as dist

from nemo_reason.backend import dist as bdist
from nemo_reason.checkpoint import io as ckpt
from nemo_reason.config.store import flatten, to_yaml
from nemo_reason.training import preemption
from nemo_reason.training.source import BatchSource  # noqa: F401  (re-exported)
from nemo_reason.training.metrics import MetricsWriter, fmt_duration
from nemo_reason.training.step import train_step


@dataclass
class TrainResult:
    checkpoint: Optional[Path]
    final_step: int
    last_loss: Optional[float]
    metrics: dict
    completed: bool = True
    seconds: float = 0.0
    tokens: int = 0
    eval: Dict[str, float] = field(default_factory=dict)


def metric_name(key: str) -> str:
    """Report names as they appear in metrics.jsonl: Megatron's "lm loss" is "loss"."""
    return "loss" if key == "lm loss" else key.replace(" ", "_")


def run_loop(state, ctx, forward_step: Callable, batches: BatchSource, *, max_steps: int,
             evaluate: Optional[Callable] = None, meta: Optional[dict] = None, flops_per_step: float = 0.0,
             peak=None, describe: str = "", extra_stats=None) -> TrainResult:
    """Train ``state`` up to ``max_steps`` steps; checkpoints go to ``ctx.step_dir/checkpoints``."""
    cfg, t, dims = state.cfg, state.cfg.trainer, ctx.dims
    rank = dist.get_rank() if dist.is_initialized() else 0
    ckpt_root = Path(ctx.step_dir) / "checkpoints"
    config_yaml = to_yaml(cfg)
    meta = dict(meta or {})
    start_step = state.step
    t_start = time.time()
    if rank == 0:
        line = (f"[nemo-reason] {cfg.run.name}/{ctx.step_name}: {dims.describe()} | params/rank {state.num_params:,} | "
                f"{batches.num_micro_batches(start_step)} micro-batches of {t.micro_batch_size} x {t.seq_length} per step")
        print(line + (f" | {describe}" if describe else ""), flush=True)
        for note in state.notes:
            print(f"[nemo-reason] {note}", flush=True)
    writer = MetricsWriter(Path(ctx.step_dir), max_steps, start_step, enabled=rank == 0, progress=t.progress,
                           hparams=flatten(cfg) if start_step == 0 else None)

    def save() -> Path:
        state.sync_params()
        info = dict(meta, step=state.step, consumed_samples=state.consumed, tokens=state.consumed * t.seq_length)
        return ckpt.save(ckpt_root, state.step, state.consumed, state.model, state.optimizer, state.scheduler,
                         config_yaml, bdist.get_rng_state(), keep_last=t.keep_last, meta=info,
                         source_state=batches.state_dict())

    if state.resumed_from is not None:
        saved = ckpt.load_source_state(state.resumed_from)
        if saved is not None:
            batches.load_state_dict(saved)

    if t.save_initial and start_step == 0:
        save()
    last_ckpt = state.resumed_from
    last: Dict[str, float] = {}
    last_eval: Dict[str, float] = {}
    window_t0, window_steps = time.time(), 0
    preemption.install(cfg.launcher.preempt_signal)
    try:
        while state.step < max_steps:
            msg = batches.announce(state.step)
            if msg and rank == 0:
                print(msg, flush=True)
            out = train_step(state, forward_step, batches.iterator(state), batches.num_micro_batches(state.step),
                             t.seq_length, t.micro_batch_size)
            step = state.step
            state.consumed += batches.samples_per_step
            window_steps += 1
            last = {metric_name(k): v for k, v in out.metrics.items()}
            if step % t.log_every == 0 or step == max_steps:
                bdist.synchronize()
                elapsed = time.time() - window_t0
                record = {"step": step, **last,
                          "lr": state.optimizer.param_groups[0]["lr"], "grad_norm": out.grad_norm,
                          "consumed_samples": state.consumed, "tokens": state.consumed * t.seq_length,
                          "step_time_s": elapsed / window_steps,
                          "tokens_per_s": batches.tokens_per_step * window_steps / elapsed}
                achieved = flops_per_step * window_steps / elapsed / 1e12 / dims.world_size
                record["model_tflops_per_s_per_rank"] = achieved
                record.update(_mfu(peak, achieved))
                record["skipped_update"] = not out.update_ok
                record.update(batches.record(step))
                if extra_stats is not None:
                    record.update(extra_stats.collect())
                if evaluate is not None and t.eval_every and step % t.eval_every == 0:
                    last_eval = evaluate(state)
                    record.update(last_eval)
                writer.log(record)
                line = batches.progress(record) if (rank == 0 and t.progress) else None
                if line:
                    print(line, flush=True)
                window_t0, window_steps = time.time(), 0
            elif extra_stats is not None:
                extra_stats.skip_log()
            # Every rank takes part in the preemption flag's all-reduce at every step but the last.
            preempted = step < max_steps and preemption.agreed()
            exiting = preempted or (bool(t.exit_interval) and step < max_steps and step % t.exit_interval == 0)
            if (t.save_every and step % t.save_every == 0) or step == max_steps or exiting:
                last_ckpt = save()
                window_t0 = time.time()
            if exiting:
                if preempted:
                    # Every rank is here: count again after the save, so that a signal which reached
                    # another rank after the first agreement (a loaded machine) is in the record too.
                    preemption.agreed()
                    preemption.record(ctx.run_dir, ctx.step_name, step, last_ckpt)
                elif rank == 0:
                    print(f"[nemo-reason] exit_interval reached at step {step}; re-run the same command to resume",
                          flush=True)
                break
    finally:
        writer.close()
    state.sync_params()
    result = TrainResult(last_ckpt, state.step, last.get("loss"), {"loss": last.get("loss"), **last},
                         completed=state.step >= max_steps, seconds=time.time() - t_start,
                         tokens=state.consumed * t.seq_length, eval=last_eval)
    if rank == 0 and result.completed:
        print(summary_line(ctx.step_name, result, start_step), flush=True)
    return result


def _mfu(peak, achieved_tflops: float) -> dict:
    """MFU against ``peak`` (backend/peak.py); on a CPU the peak is a probe, so the value is an estimate."""
    if peak is None:
        return {"mfu": None}
    return {"mfu": peak.mfu(achieved_tflops), **({"mfu_is_estimate": True} if peak.estimate else {})}


def summary_line(step_name: str, r: TrainResult, start_step: int) -> str:
    parts = [f"[nemo-reason] step '{step_name}' finished: {r.final_step} steps"
             + (f" ({r.final_step - start_step} this run)" if start_step else "") + f" in {fmt_duration(r.seconds)}"]
    if r.last_loss is not None:
        parts.append(f"final loss {r.last_loss:.4f}")
    for k, v in r.eval.items():
        parts.append(f"{k.replace('_', ' ')} {v:.4f}")
    parts.append(f"{r.tokens:,} tokens")
    parts.append(f"checkpoint {r.checkpoint}")
    return " | ".join(parts)
