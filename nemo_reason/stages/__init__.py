"""Pipeline step types: one module each, registered by name with :func:`register_step`.

A step type is a function ``run(cfg, ctx) -> StepResult`` and a config dataclass (a
:class:`~nemo_reason.config.steps.StepConfig` subclass) holding its own fields, which a recipe sets
on the step's ``pipeline`` entry. ``cfg`` is the run config as the step sees it (its ``overrides``
applied); ``ctx.step`` is the typed step config. Adding one is one module here plus its import in
:data:`_BUILTIN` below; ``nemo-reason list`` shows what is registered, with each type's fields.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Type

from nemo_reason.config.steps import STEP_CONFIGS, StepConfig
from nemo_reason.registry import Registry

STEPS: Registry = Registry("pipeline step type")

_BUILTIN = ("nemo_reason.stages.pretrain", "nemo_reason.stages.perplexity", "nemo_reason.stages.eval",
            "nemo_reason.stages.sft", "nemo_reason.stages.grpo", "nemo_reason.stages.distill",
            "nemo_reason.stages.prune")


def register_step(name: str, doc: str = "", config: Type[StepConfig] = StepConfig):
    """Register ``run(cfg, ctx)`` as step type ``name``, with ``config`` (a :class:`StepConfig`
    subclass) as the dataclass of its own fields (``ctx.step`` at run time)."""
    if not (isinstance(config, type) and issubclass(config, StepConfig)):
        raise TypeError(f"register_step({name!r}, config=...): {config!r} is not a StepConfig subclass")

    def deco(fn):
        STEPS.register(name, doc)(fn)
        STEP_CONFIGS.register(name, doc)(config)
        return fn

    return deco


def load_builtin_steps() -> Registry:
    for mod in _BUILTIN:
        importlib.import_module(mod)
    return STEPS


@dataclass
class StepContext:
    """What a step gets besides its config: layout, where to write, what came before."""

    dims: object
    run_dir: Path
    step_dir: Path
    step_name: str
    input_checkpoint: Optional[Path] = None
    rank: int = 0
    # This step's typed config (its pipeline entry) and the fingerprint of its config and input.
    step: Optional[StepConfig] = None
    fingerprint: Optional[str] = None

    def require_input(self) -> Path:
        """The input checkpoint of a step that measures or transforms one (eval, prune, ...)."""
        if self.input_checkpoint is None:
            from nemo_reason.config.errors import ConfigError

            kind = self.step.type if self.step is not None else "this step"
            raise ConfigError(f"step '{self.step_name}' ({kind}) needs a checkpoint to start from: put it after a "
                              "training step, or start the pipeline from one with run.init_checkpoint=PATH")
        return self.input_checkpoint

    def tokenizer(self, cfg):
        """The tokenizer the input checkpoint holds (the previous step's, or an imported model's from
        ``run.init_checkpoint``: its ids are what the weights know), else the run's ``data.tokenizer``."""
        if self.input_checkpoint is not None:
            from nemo_reason.checkpoint.meta import load_tokenizer

            return load_tokenizer(self.input_checkpoint, cfg.data.cache_dir)
        from nemo_reason.data.tokenizer import build_tokenizer

        return build_tokenizer(cfg.data.tokenizer, cfg.data.tokenizer_path, cfg.data.cache_dir)


@dataclass
class StepResult:
    checkpoint: Optional[Path]
    metrics: dict = field(default_factory=dict)
    # False when the step stopped early (exit_interval, preemption): the pipeline stops too.
    completed: bool = True

    @classmethod
    def of(cls, result) -> "StepResult":
        """From a training loop's :class:`~nemo_reason.training.loop.TrainResult`."""
        metrics = {"final_step": result.final_step, "loss": result.last_loss, **result.eval,
                   "tokens": result.tokens, "seconds": result.seconds}
        return cls(result.checkpoint, metrics, completed=result.completed)
