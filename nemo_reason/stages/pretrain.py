"""``pretrain``: next-token prediction on the configured data, over the shared training core.

Data (Megatron ``GPTDataset`` blends in phases, tokenized with the input checkpoint's tokenizer
when there is one, e.g. an imported Hugging Face model's, else ``data.tokenizer``), then the train state (model, DDP, optimizer,
schedule; resumed from this step's own checkpoints, else the weights of the input checkpoint:
the previous step's, or ``run.init_checkpoint``, with the optimizer and schedule fresh), then the
shared loop with the LM loss over the dataset's micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass

from nemo_reason.config.steps import StepConfig
from nemo_reason.stages import StepContext, StepResult, register_step


@dataclass
class PretrainConfig(StepConfig):
    """Pretraining has no fields of its own: data, trainer and optim come from the run config
    (set them for this step only under ``overrides``)."""


@register_step("pretrain", "next-token pretraining with Megatron-Core (GPTDataset blends, DDP, dist checkpoints)",
               config=PretrainConfig)
def run(cfg, ctx: StepContext) -> StepResult:
    # Imported here so that `nemo-reason list/show` stay light (no Megatron import).
    from nemo_reason.data.loader import build_data
    from nemo_reason.training.accounting import loop_accounting
    from nemo_reason.training.batches import DatasetBatches, dataset_evaluator
    from nemo_reason.training.loop import run_loop
    from nemo_reason.training.losses import lm_forward_step
    from nemo_reason.training.state import build_train_state

    data = build_data(cfg, ctx.dims.dp, tokenizer=ctx.tokenizer(cfg))
    state = build_train_state(cfg, ctx, data.tokenizer.vocab_size, ckpt_root=ctx.step_dir / "checkpoints",
                              init_checkpoint=ctx.input_checkpoint)
    if ctx.rank == 0:
        print(data.describe(state.step), flush=True)
    ent = (data.stats or {}).get("unigram_entropy_nats")
    result = run_loop(state, ctx, lm_forward_step, DatasetBatches(data.train, state.cfg.trainer, ctx.dims, data),
                      max_steps=state.cfg.trainer.max_steps,
                      evaluate=dataset_evaluator(data.valid, state.cfg.trainer, ctx.dims, lm_forward_step),
                      describe=f"corpus unigram entropy {ent:.3f} nats" if ent else "",
                      **loop_accounting(state, ctx, data.tokenizer))
    return StepResult.of(result)
