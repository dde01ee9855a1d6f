"""``sft``: supervised fine-tuning on conversations, loss on the assistant's tokens only.

Conversations come from JSONL files or the bundled corpora (``bundled:math``, ``bundled:mcq:500``,
...: :mod:`nemo_reason.data.sft`), rendered by a chat template (built in, or the one in a Hugging
Face tokenizer's config) with the tokenizer the input checkpoint was trained with (else the run's
``data.tokenizer``). With ``packed`` several conversations share one sequence, with attention and
positions reset at each boundary (Megatron's ``packed_seq_params``; one row per micro-batch). The
rest is the shared core: train state from the input checkpoint (optimizer and schedule fresh),
the loop over the dataset's micro-batches, LM-loss evaluation on a held-out slice of the
conversations (AceMath: general SFT, then math SFT, as two ``sft`` steps of one pipeline).

Left out: multi-turn masking options (every assistant turn is trained), sequence parallel or
context parallel packing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from nemo_reason.config.errors import ConfigError
from nemo_reason.config.steps import StepConfig
from nemo_reason.stages import StepContext, StepResult, register_step


@dataclass
class SFTConfig(StepConfig):
    # Conversation sources: JSONL files ({messages} or {prompt, response}) or bundled:math|mcq|code[:N].
    sources: List[str] = field(default_factory=lambda: ["bundled:math"])
    # Chat template: auto (the HF tokenizer's chat_template, else chatml), chatml, plain, qa or hf.
    template: str = "auto"
    # Pack several conversations into each sequence (positions and attention reset at boundaries).
    packed: bool = True
    # Skip and count bad records instead of stopping at the first with file:line.
    skip_bad: bool = False
    # Conversations held out for trainer.eval_every evaluations (0: no evaluation).
    eval_conversations: int = 64

    def validate(self) -> None:
        where = f"pipeline step '{self.name or self.type}'"
        if not self.sources:
            raise ConfigError(f"{where}: sources is empty: give JSONL files or bundled:math|mcq|code")
        from nemo_reason.data.chat_template import CHAT_TEMPLATES

        names = ("auto", *CHAT_TEMPLATES.names())
        if self.template not in names:
            raise ConfigError(f"{where}: template={self.template!r}: use one of {', '.join(names)}")
        if self.eval_conversations < 0:
            raise ConfigError(f"{where}: eval_conversations must be >= 0")

    def check(self, cfg) -> None:
        where = f"pipeline step '{self.name or self.type}' (sft)"
        if self.packed and cfg.trainer.micro_batch_size != 1:
            raise ConfigError(f"{where}: packed=true puts several conversations in one row, so it needs "
                              f"trainer.micro_batch_size=1 (got {cfg.trainer.micro_batch_size}); keep the global "
                              "batch through accumulation (overrides: {trainer.micro_batch_size: 1}), or set "
                              "packed=false")
        if cfg.parallel.cp > 1:
            raise ConfigError(f"{where}: context parallelism does not split packed conversations here; set "
                              "overrides: {parallel.cp: 1} on this step")


@register_step("sft", "supervised fine-tuning on conversations, assistant-only loss, packed sequences",
               config=SFTConfig)
def run(cfg, ctx: StepContext) -> StepResult:
    from nemo_reason.data.sft import SFTDataset, build_sft_dataset
    from nemo_reason.training.accounting import loop_accounting
    from nemo_reason.training.batches import DatasetBatches, dataset_evaluator
    from nemo_reason.training.loop import run_loop
    from nemo_reason.training.losses import sft_forward_step
    from nemo_reason.training.state import build_train_state

    step: SFTConfig = ctx.step
    t = cfg.trainer
    tok = ctx.tokenizer(cfg)
    data = build_sft_dataset(step.sources, tok, t.seq_length, template=step.template, packed=step.packed,
                             seed=cfg.run.seed, skip_bad=step.skip_bad, cache_dir=cfg.data.cache_dir)
    valid = None
    n_eval = min(step.eval_conversations, len(data.documents) // 10) if t.eval_every else 0
    if n_eval:  # the first conversations of the seeded order are held out
        valid = SFTDataset(data.documents[:n_eval], t.seq_length, packed=step.packed, seed=cfg.run.seed,
                           num_samples=None)
        data = SFTDataset(data.documents[n_eval:], t.seq_length, packed=step.packed, seed=cfg.run.seed)
        valid.num_samples = max(len(valid), t.eval_iters * t.global_batch_size * (t.max_steps // t.eval_every + 1))
    data.num_samples = t.max_steps * t.global_batch_size
    state = build_train_state(cfg, ctx, tok.vocab_size, ckpt_root=ctx.step_dir / "checkpoints",
                              init_checkpoint=ctx.input_checkpoint)
    st = data.stats
    describe = (f"{st['conversations']:,} conversations, {st['samples_per_epoch']:,} samples per epoch "
                f"({100 * st['fill']:.0f}% filled), {st['trained_tokens']:,} trained tokens per epoch"
                + (f", skipped {st['skipped']}" if st["skipped"] else ""))
    result = run_loop(state, ctx, sft_forward_step, DatasetBatches(data, state.cfg.trainer, ctx.dims),
                      max_steps=t.max_steps,
                      evaluate=dataset_evaluator(valid, state.cfg.trainer, ctx.dims, sft_forward_step),
                      describe=describe, **loop_accounting(state, ctx, tok))
    return StepResult.of(result)
