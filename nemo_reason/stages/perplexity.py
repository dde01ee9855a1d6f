"""``perplexity``: LM loss and perplexity of the input checkpoint on held-out text; trains nothing.

The model is built from what the checkpoint records (its architecture and tokenizer: a pruned or
imported model needs no recipe change), frozen, and run forward-only over ``batches`` global
batches of a held-out blend: ``blend``, or the validation split of the run's data (its last
phase). The token-weighted mean loss over all ranks is exact (``training.step.reduce_metrics``).
The step hands its input checkpoint on unchanged, so it can sit anywhere in a pipeline; like every
step it is skipped when its config and input are unchanged.

Left out: generation-based benchmarks with verifiers (the ``eval`` step of the rollout work).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import List

from nemo_reason.config.errors import ConfigError
from nemo_reason.config.schema import BlendEntry
from nemo_reason.config.steps import StepConfig
from nemo_reason.stages import StepContext, StepResult, register_step


@dataclass
class PerplexityConfig(StepConfig):
    # Held-out blend [{weight, path}] used whole; empty: the validation split of the run's data (last phase).
    blend: List[BlendEntry] = field(default_factory=list)
    # Global batches (trainer.global_batch_size x trainer.seq_length tokens each) to measure on.
    batches: int = 4

    def validate(self) -> None:
        if self.batches < 1:
            raise ConfigError(f"pipeline step '{self.name or self.type}': batches={self.batches} must be >= 1")


@register_step("perplexity", "LM loss and perplexity of the input checkpoint on held-out text (no training)",
               config=PerplexityConfig)
def run(cfg, ctx: StepContext) -> StepResult:
    from nemo_reason.checkpoint.meta import read_meta
    from nemo_reason.data.loader import build_datasets, resolve_blend
    from nemo_reason.training.batches import dataset_evaluator
    from nemo_reason.training.state import build_frozen_state

    step: PerplexityConfig = ctx.step
    state, tok = build_frozen_state(cfg, ctx)
    t = state.cfg.trainer
    n = step.batches * t.global_batch_size
    if step.blend:
        _, valid, _ = build_datasets(state.cfg, [0, n, 0], tok, cfg.run.seed,
                                     valid_blend=resolve_blend(step.blend, state.cfg, tok))
    else:
        last = state.cfg.data.train_phases()[-1]
        _, valid, _ = build_datasets(state.cfg, [0, n, 0], tok, cfg.run.seed,
                                     blend=resolve_blend(last.blend, state.cfg, tok))
    if valid is None or len(valid) < n:
        raise ConfigError(f"step '{ctx.step_name}': the held-out data holds {0 if valid is None else len(valid)} "
                          f"samples, fewer than batches x trainer.global_batch_size = {n}: lower `batches` or "
                          "give a larger `blend`")
    # One "evaluation" of `batches` global batches: the loop's evaluator with eval_iters = batches.
    from dataclasses import replace

    evaluate = dataset_evaluator(valid, replace(t, eval_iters=step.batches, eval_every=1), ctx.dims,
                                 _lm_forward_step())
    state.step = 1  # the evaluator reads slice (step // eval_every - 1) = 0
    metrics = evaluate(state)
    loss = metrics["eval_loss"]
    out = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": n * t.seq_length,
           "params": read_meta(ctx.input_checkpoint).params, "checkpoint": str(ctx.input_checkpoint)}
    if ctx.rank == 0:
        (ctx.step_dir / "metrics.json").write_text(json.dumps(out, indent=1))
        print(f"[nemo-reason] step '{ctx.step_name}' finished: loss {loss:.4f} | perplexity {out['perplexity']:.2f} "
              f"| {out['tokens']:,} held-out tokens | model {ctx.input_checkpoint}", flush=True)
    return StepResult(ctx.input_checkpoint, out)


def _lm_forward_step():
    from nemo_reason.training.losses import lm_forward_step

    return lm_forward_step
