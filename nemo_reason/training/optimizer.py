"""Megatron optimizer (plain or distributed) and learning-rate schedule from ``OptimConfig``.

Uses ``megatron.core.optimizer.get_megatron_optimizer`` (AdamW from apex/TE on GPU, torch AdamW
as Megatron's fallback on CPU) and Megatron's ``OptimizerParamScheduler`` with schedules in
optimizer steps: linear warmup, then cosine / linear / constant decay to ``min_lr``, or WSD
(warmup, stable, and a final decay over ``wsd_decay_steps``).
"""

from __future__ import annotations

import torch
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from nemo_reason.config.schema import RunConfig


def optimizer_config(cfg: RunConfig) -> OptimizerConfig:
    o, t = cfg.optim, cfg.trainer
    return OptimizerConfig(
        optimizer=o.name,
        lr=o.lr,
        min_lr=o.min_lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.beta1,
        adam_beta2=o.beta2,
        adam_eps=o.eps,
        clip_grad=o.clip_grad,
        bf16=t.precision in ("bf16", "fp8"),
        fp16=t.precision == "fp16",
        params_dtype={"bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16}.get(t.precision, torch.float32),
        use_distributed_optimizer=o.distributed,
        overlap_param_gather_with_optimizer_step=False,
    )


def build_optimizer(cfg: RunConfig, model_chunks):
    return get_megatron_optimizer(optimizer_config(cfg), model_chunks)


def build_scheduler(cfg: RunConfig, optimizer) -> OptimizerParamScheduler:
    o, t = cfg.optim, cfg.trainer
    decay = o.decay_steps or t.max_steps
    warmup = min(o.warmup_steps, max(decay - 1, 0))
    style = {"constant": "constant", "linear": "linear", "cosine": "cosine", "wsd": "WSD"}[o.schedule]
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=o.lr,
        min_lr=o.min_lr,
        lr_warmup_steps=warmup,
        lr_decay_steps=decay,
        lr_decay_style=style,
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=decay,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
        wsd_decay_steps=o.wsd_decay_steps if o.schedule == "wsd" else None,
        lr_wsd_decay_style=o.wsd_decay_style if o.schedule == "wsd" else None,
    )
