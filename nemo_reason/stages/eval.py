"""``eval``: sample from the input checkpoint and verify: pass@1, pass@k, maj@k, length per domain.

The model is built from what the checkpoint records (architecture, tokenizer), frozen, and
sampled by the rollout sampler on held-out splits of the bundled corpora (``tasks``; checked
against every bundled source the run trains on plus the default ones, see
:mod:`nemo_reason.evaluation.tasks`) and on a user's JSONL (``input``). Everything that can be
wrong with the input (an unknown task or verifier, a record without a field) fails before the
model is built. Results: a table on the terminal, ``<step_dir>/eval.json`` (every number and
how it was obtained), ``<step_dir>/eval_samples.jsonl`` (each completion with its score), and
the numbers as the step's metrics (``math/pass@1``, ...). The step hands its input checkpoint on.

Left out: a separate reference model, LLM judges.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import List, Optional

from nemo_reason.config.errors import ConfigError
from nemo_reason.config.steps import StepConfig
from nemo_reason.stages import StepContext, StepResult, register_step


@dataclass
class EvalConfig(StepConfig):
    # Bundled held-out domains to evaluate: math, mcq, code ([] with `input` for a user file only).
    tasks: List[str] = field(default_factory=lambda: ["math", "mcq", "code"])
    # Prompts per bundled domain (the first ones of its held-out split).
    num_prompts: int = 32
    # Samples per prompt; pass@k and maj@k need n >= k.
    n: int = 4
    # k of pass@k and maj@k (1 <= k <= n).
    k: int = 4
    # Sampling temperature (0: greedy).
    temperature: float = 0.6
    # Nucleus sampling: the smallest set of tokens reaching this probability (1: off).
    top_p: float = 0.95
    # Keep only the k most likely tokens (0: off).
    top_k: int = 0
    # Greedy decoding (temperature 0 means the same).
    greedy: bool = False
    # Tokens generated per sample at most.
    max_new_tokens: int = 96
    # Stop strings; null: each domain's own (math "\nQuestion:", mcq "\n", code "\nTests:"; none for input).
    stop: Optional[List[str]] = None
    # Seed of the sampler's draws (the same seed, the same samples).
    seed: int = 1234
    # Prompt template; "" = each domain's default. {question}, {choices}, {instruction}, any record field.
    prompt_template: str = ""
    # A user JSONL to evaluate too (one record a line), with the field names below.
    input: str = ""
    # Field names of `input`'s records: the question, the gold answer, the tests (code).
    question_field: str = "question"
    answer_field: str = "answer"
    tests_field: str = "tests"
    # Verifier for `input`: a name in nemo_reason.rewards.REWARDS or module:function.
    verifier: str = "math"
    # Records of `input` to use (0: all).
    input_num: int = 0
    # Prompts per generation batch (each with n samples).
    batch_size: int = 16
    # Verifier worker processes, and the seconds one completion may take to verify (then it scores 0).
    reward_workers: int = 2
    reward_timeout_s: float = 10.0

    def validate(self) -> None:
        from nemo_reason.evaluation.tasks import DOMAINS

        where = f"pipeline step '{self.name or self.type}'"
        for t in self.tasks:
            if t not in DOMAINS:
                import difflib

                hints = difflib.get_close_matches(t, list(DOMAINS), n=2, cutoff=0.4)
                raise ConfigError(f"{where}: tasks: unknown task {t!r}" + (f"; did you mean {', '.join(hints)}?"
                                  if hints else "") + f" (bundled: {', '.join(DOMAINS)}; a file: input=PATH)")
        if not self.tasks and not self.input:
            raise ConfigError(f"{where}: nothing to evaluate: give tasks (math, mcq, code) or input=PATH")
        for name in ("num_prompts", "n", "max_new_tokens", "batch_size", "reward_workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}: {name}={getattr(self, name)} must be >= 1")
        if not 1 <= self.k <= self.n:
            raise ConfigError(f"{where}: k={self.k} must be in [1, n={self.n}] (pass@k and maj@k need n >= k "
                              "samples per prompt)")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ConfigError(f"{where}: need temperature >= 0, 0 < top_p <= 1, top_k >= 0 (got {self.temperature}, "
                              f"{self.top_p}, {self.top_k})")
        if self.input_num < 0 or self.reward_timeout_s <= 0:
            raise ConfigError(f"{where}: input_num must be >= 0 and reward_timeout_s > 0")


def sampling_params(step, seed: int):
    from nemo_reason.rollout.sampler import SamplingParams

    return SamplingParams(n=step.n, temperature=step.temperature, top_p=step.top_p, top_k=step.top_k,
                          greedy=step.greedy or step.temperature == 0, max_new_tokens=step.max_new_tokens,
                          stop=[], seed=seed)


def build_tasks(step, sources):
    """The tasks of an eval config, every input check done (nothing generated yet)."""
    from nemo_reason.evaluation.tasks import bundled_tasks, load_jsonl_task
    from nemo_reason.rewards import get_reward

    tasks = bundled_tasks(step.tasks, step.num_prompts, sources, step.prompt_template, step.stop)
    if step.input:
        get_reward(step.verifier)  # unknown name: ConfigError with the closest ones
        tasks.append(load_jsonl_task(step.input, step.question_field, step.answer_field, step.tests_field,
                                     step.verifier, step.prompt_template, step.stop, step.input_num,
                                     sources=sources))
    return tasks


@register_step("eval", "pass@1 / pass@k / maj@k of the input checkpoint by sampling and verifiers (no training)",
               config=EvalConfig)
def run(cfg, ctx: StepContext) -> StepResult:
    from megatron.core import parallel_state

    from nemo_reason.evaluation.run import evaluate, format_table, metric_items
    from nemo_reason.evaluation.tasks import describe_task, training_sources
    from nemo_reason.training.state import build_frozen_state

    step: EvalConfig = ctx.step
    ctx.require_input()
    if ctx.dims.pp > 1 or ctx.dims.cp > 1:
        raise ConfigError(f"step '{ctx.step_name}' (eval): generation runs without pipeline or context "
                          "parallelism; set overrides: {parallel.pp: 1, parallel.cp: 1} on this step")
    tasks = build_tasks(step, training_sources(cfg.data, cfg.pipeline))  # all input checks, before the model
    if ctx.rank == 0:
        for t in tasks:
            print(f"[eval] {describe_task(t, step.n)}", flush=True)
    state, tok = build_frozen_state(cfg, ctx)
    dp = None
    if ctx.dims.dp > 1:
        dp = (ctx.dims.dp_rank, ctx.dims.dp, parallel_state.get_data_parallel_group())
    results = evaluate(state.model, tok, tasks, sampling_params(step, step.seed), step.k,
                       batch_size=step.batch_size, reward_workers=step.reward_workers,
                       reward_timeout_s=step.reward_timeout_s, dp=dp, rank=ctx.rank)
    if ctx.rank != 0:
        return StepResult(ctx.input_checkpoint, {})
    samples = results.pop("samples")
    results["checkpoint"] = str(ctx.input_checkpoint)
    (ctx.step_dir / "eval.json").write_text(json.dumps(results, indent=1))
    with open(ctx.step_dir / "eval_samples.jsonl", "w", encoding="utf-8") as f:
        for row in samples:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(format_table(results), flush=True)
    print(f"[nemo-reason] step '{ctx.step_name}' finished: {len(tasks)} tasks in {results['seconds']:.1f}s | "
          f"{ctx.step_dir / 'eval.json'} | model {ctx.input_checkpoint}", flush=True)
    return StepResult(ctx.input_checkpoint, {**metric_items(results), "seconds": results["seconds"]})
