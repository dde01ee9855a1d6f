"""What a training step records about itself, for any step type: checkpoint metadata (the
architecture and tokenizer it holds, parameters, the step's fingerprint), model FLOPs per step and
the MFU peak, and MoE router statistics.

``loop_accounting(state, ctx, tokenizer)`` returns the keyword arguments of
:func:`nemo_reason.training.loop.run_loop` that carry them.
"""

from __future__ import annotations

import dataclasses
import torch.distributed as dist

from nemo_reason.backend import peak as bpeak
from nemo_reason.models.vocab import padded_vocab_size
from nemo_reason.planner.flops import flops_per_step_from_config
from nemo_reason.planner.params import param_count


def loop_accounting(state, ctx, tokenizer) -> dict:
    cfg, t = state.cfg, state.cfg.trainer
    rank = dist.get_rank() if dist.is_initialized() else 0
    padded = padded_vocab_size(tokenizer.vocab_size, cfg.model.make_vocab_size_divisible_by, ctx.dims.tp)
    from nemo_reason.checkpoint import meta as cmeta

    meta = {
        "step_type": ctx.step.type if getattr(ctx, "step", None) is not None else None,
        "step_name": ctx.step_name,
        "fingerprint": getattr(ctx, "fingerprint", None),
        "model": dataclasses.asdict(cfg.model),
        "tokenizer": cmeta.tokenizer_record(cfg.data, tokenizer),
        "params": param_count(cfg.model, padded),
        "padded_vocab_size": padded,
    }
    out = {"meta": meta, "flops_per_step": flops_per_step_from_config(cfg, padded)}
    # MFU's denominator, per rank (rank 0 logs): trainer.peak_tflops, the GPU's bf16 peak, or on CPU a
    # matmul probe (an estimate).
    out["peak"] = bpeak.Peak.resolve(t.peak_tflops, cfg.data.cache_dir) if rank == 0 else None
    if cfg.model.is_moe:
        from nemo_reason.training.moe_stats import RouterStats

        num_micro = t.global_batch_size // (t.micro_batch_size * ctx.dims.dp)
        out["extra_stats"] = RouterStats(state.chunks, cfg.model.num_layers, cfg.model.num_moe_experts, num_micro,
                                         ctx.dims.sequence_parallel)
    return out

