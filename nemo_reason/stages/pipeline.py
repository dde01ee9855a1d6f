"""Run a recipe's ``pipeline``: each step in order, each handing its checkpoint to the next.

Per step, ``<run.dir>/<step name>/`` holds its checkpoints, metrics and a ``done.json`` marker.
Re-running the same command skips finished steps (same ``max_steps``) and resumes the
unfinished one from its newest complete checkpoint.
``run.stop_after=NAME`` stops after that step (one job per step on SLURM).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import List

import torch.distributed as dist

from nemo_reason.config.schema import RunConfig
from nemo_reason.config.store import step_config, to_yaml
from nemo_reason.stages import StepContext, StepResult, load_builtin_steps

DONE = "done.json"


def step_names(cfg: RunConfig) -> List[str]:
    return [s.name or s.type for s in cfg.pipeline]


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def run_pipeline(cfg: RunConfig, dims) -> List[StepResult]:
    steps = load_builtin_steps()
    rank = dist.get_rank() if dist.is_initialized() else 0
    run_dir = Path(cfg.run.dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    results: List[StepResult] = []
    # run.init_checkpoint: the first step starts from these weights (any layout: resharded on load).
    prev_ckpt = Path(cfg.run.init_checkpoint) if cfg.run.init_checkpoint else None
    names = step_names(cfg)
    # run.stop_after: this invocation runs the steps up to that one (one SLURM job per step).
    last = names.index(cfg.run.stop_after) + 1 if cfg.run.stop_after else len(names)
    for step, name in list(zip(cfg.pipeline, names))[:last]:
        scfg = step_config(cfg, step)
        step_dir = run_dir / name
        done = step_dir / DONE
        if done.is_file():
            info = json.loads(done.read_text())
            if info.get("max_steps") == scfg.trainer.max_steps:
                if rank == 0:
                    print(f"[nemo-reason] step '{name}' already done ({done}); skipping", flush=True)
                prev_ckpt = Path(info["checkpoint"]) if info.get("checkpoint") else None
                results.append(StepResult(prev_ckpt, info.get("metrics", {})))
                continue
        if rank == 0:
            step_dir.mkdir(parents=True, exist_ok=True)
            (step_dir / "config.yaml").write_text(to_yaml(scfg))
        ctx = StepContext(dims=dims, run_dir=run_dir, step_dir=step_dir, step_name=name,
                          input_checkpoint=prev_ckpt, rank=rank)
        t0 = time.time()
        result = steps[step.type](scfg, ctx)
        results.append(result)
        if not result.completed:
            break
        if rank == 0:
            _write_json_atomic(done, {"type": step.type, "checkpoint": str(result.checkpoint) if result.checkpoint else None,
                                      "max_steps": scfg.trainer.max_steps, "metrics": result.metrics,
                                      "seconds": time.time() - t0})
        if dist.is_initialized():
            dist.barrier()
        prev_ckpt = result.checkpoint
    return results
