"""``pretrain``: next-token prediction on the configured data, with Megatron's training loop.

Takes an input checkpoint from the previous step when there is one (its weights only: the
optimizer and schedule start fresh); resumes from its own checkpoints when re-run.
"""

from __future__ import annotations

from nemo_reason.stages import StepContext, StepResult, register_step


@register_step("pretrain", "next-token pretraining with Megatron-Core (GPTDataset, DDP, dist checkpoints)")
def run(cfg, ctx: StepContext) -> StepResult:
    # Imported here so that `nemo-reason list/show` stay light (no Megatron import).
    from nemo_reason.training.losses import lm_forward_step
    from nemo_reason.training.loop import train

    result = train(cfg, ctx, ctx.step_dir, lm_forward_step, init_checkpoint=ctx.input_checkpoint)
    return StepResult(result.checkpoint, {"final_step": result.final_step, "loss": result.last_loss},
                      completed=result.completed)
