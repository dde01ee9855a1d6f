"""The default pipeline (`nemo-reason run`, recipes/tiny_lifecycle.yaml) shortened to a few steps per
step, run once per test session through the CLI, for every test that reads a whole lifecycle run.

    # a session-scoped fixture, registered for tests/e2e in tests/e2e/conftest.py
    def test_something(lifecycle_run):
        run_dir = lifecycle_run.run_dir        # <tmp>/runs/lifecycle (absolute): one folder per step
        lifecycle_run.stdout                   # the CLI's output (stdout + stderr)
        lifecycle_run.args                     # the CLI arguments, to run the same command again
        lifecycle_run.step_names               # the pipeline's step names, in order

Treat the folder as read-only: it is shared; a test that re-runs into it changes what later tests see
(copy it instead, as tests/e2e/test_lifecycle.py does).

The shortening is a list of CLI overrides (:func:`short_overrides`) on the default recipe as a user
types them: each step keeps its type, fields and code path and only runs fewer optimizer steps, on
fewer prompts and batches, with shorter responses; the model stays tiny_hybrid-sized, so pruning
targets hold. Nothing else is changed. The overrides are built from the composed recipe (by step
name), so a step added to the recipe is run too, and one the shortening does not know fails here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import pytest

from tests.conftest import run_cli

RECIPE = "tiny_lifecycle"
RUN_DIR = "runs/lifecycle"

# Run-config fields of the pretraining step (and the default of every step without its own).
TOP = {"trainer.max_steps": 6, "trainer.eval_every": 3, "trainer.save_every": 3, "trainer.log_every": 1,
       "trainer.progress": False, "data.num_documents": 600}

# Per step name: (its own fields, its run-config overrides). Steps not named here fail the fixture.
STEPS: Dict[str, tuple] = {
    "pretrain": ({}, {}),
    "sft": ({"eval_conversations": 8},
            {"trainer.max_steps": 4, "trainer.global_batch_size": 4, "trainer.eval_every": 2,
             "trainer.save_every": 2, "trainer.log_every": 1}),
    "grpo_math": ({"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 8, "heldout_every": 2,
                   "heldout_prompts": 8},
                  {"trainer.max_steps": 2, "trainer.global_batch_size": 16, "trainer.micro_batch_size": 16,
                   "trainer.save_every": 1}),
    "grpo_code": ({"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 16, "heldout_every": 2,
                   "heldout_prompts": 4},
                  {"trainer.max_steps": 2, "trainer.global_batch_size": 16, "trainer.micro_batch_size": 16,
                   "trainer.save_every": 1}),
    "prune": ({"calibration_batches": 1, "eval_batches": 1}, {}),
    "distill": ({}, {"trainer.max_steps": 4, "trainer.eval_every": 2, "trainer.save_every": 2}),
    "distilled_loss": ({"batches": 1}, {}),
    "eval": ({"num_prompts": 4, "n": 2, "k": 2, "max_new_tokens": 16}, {}),
}


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if not isinstance(v, str) else v


def short_overrides(recipe: str = RECIPE) -> List[str]:
    """CLI overrides that shorten every step of ``recipe`` (see the module docstring)."""
    from nemo_reason.config.store import compose

    cfg = compose(recipe)
    out = [f"{k}={_value(v)}" for k, v in TOP.items()]
    for i, step in enumerate(cfg.pipeline):
        name = step.name or step.type
        if name not in STEPS:
            raise AssertionError(f"tests/e2e/lifecycle_run.py does not know how to shorten step '{name}' of "
                                 f"{recipe}: add it to STEPS")
        own, over = STEPS[name]
        out += [f"pipeline.{i}.{k}={_value(v)}" for k, v in own.items()]
        if over:
            body = ", ".join(f"{k}: {_value(v)}" for k, v in over.items())
            out.append(f"++pipeline.{i}.overrides={{{body}}}")
    return out


@dataclass
class LifecycleRun:
    run_dir: Path           # absolute: <tmp>/runs/lifecycle
    stdout: str             # the CLI's output (stdout + stderr)
    overrides: List[str]    # the shortening (run.dir not included)
    cwd: Path
    seconds: float
    step_names: List[str] = field(default_factory=list)

    @property
    def args(self) -> List[str]:
        """The CLI arguments of the run: ``run`` (no recipe: the default), the shortening, run.dir."""
        return ["run", *self.overrides, f"run.dir={self.run_dir}"]


def lifecycle_args(run_dir: Path, extra=()) -> List[str]:
    """``nemo-reason`` arguments of the shortened default pipeline into ``run_dir`` (absolute: the
    checkpoints the steps hand on are then recorded by absolute path, so a copy of the folder skips
    the steps it holds, see tests/e2e/test_lifecycle.py)."""
    return ["run", *short_overrides(), f"run.dir={Path(run_dir).resolve()}", *extra]


@pytest.fixture(scope="session")
def lifecycle_run(tmp_path_factory) -> LifecycleRun:
    """One uninterrupted shortened default pipeline, shared by the tests of a session (read-only)."""
    from nemo_reason.config.store import compose

    cwd = tmp_path_factory.mktemp("lifecycle")
    run_dir = (cwd / RUN_DIR).resolve()
    t0 = time.time()
    proc = run_cli(lifecycle_args(run_dir), cwd=cwd, timeout=900)
    names = [s.name or s.type for s in compose(RECIPE).pipeline]
    return LifecycleRun(run_dir, proc.stdout, short_overrides(), cwd, time.time() - t0, names)
