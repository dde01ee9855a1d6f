"""Run a recipe's ``pipeline``: each step in order, each handing its checkpoint to the next, resumed by content.

Per step, ``<run.dir>/<step name>/`` holds its checkpoints, metrics, ``attempt.json`` (written when
the step starts) and ``done.json`` (when it finishes). Both record the step's **fingerprint**: a hash
of its resolved config (the run config with its overrides applied, and its own typed fields) and of
its input (the previous step's output checkpoint, or ``run.init_checkpoint``; any other checkpoint
the step reads, from its config's ``extra_inputs``, e.g. a distillation teacher; and the identity of
the data files it reads). Re-running the same command:

- **skips** a step whose ``done.json`` has the same fingerprint;
- **resumes** an interrupted step (``attempt.json`` with the same fingerprint) from its newest
  verified checkpoint;
- **re-runs** a step whose fingerprint changed, saying which fields changed (or that its input did),
  after setting its old outputs aside under ``<run.dir>/.superseded/`` (the newest set per step is
  kept). A re-run step produces a new checkpoint, so every later step's input changes and it
  re-runs too; earlier steps are untouched.

Fields that change how a step runs but not what it computes are left out of the fingerprint:
the launcher, the parallel layout (checkpoints reshard, and layouts are parity-tested against
one process), the distributed-optimizer and overlap switches, recomputation, the backend choice,
logging/progress/checkpoint cadence, ``exit_interval``, the run's directory and name, and the cache
folder. ``run.stop_after=NAME`` stops after that step (one job per step on SLURM).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import List, Optional, Tuple

import torch.distributed as dist

from nemo_reason.config.schema import RunConfig
from nemo_reason.config.store import flatten, step_config, to_yaml
from nemo_reason.stages import StepContext, StepResult, load_builtin_steps

DONE = "done.json"
ATTEMPT = "attempt.json"
SUPERSEDED = ".superseded"

# Dotted prefixes of fields that do not change what a step computes (see the module docstring).
EXECUTION_ONLY = (
    "launcher.", "parallel.", "pipeline", "run.dir", "run.name", "run.resume", "run.stop_after",
    "run.init_checkpoint",  # its content is part of the input fingerprint instead
    "optim.distributed", "optim.overlap_grad_reduce", "optim.overlap_param_gather",
    "trainer.recompute", "trainer.progress", "trainer.log_every", "trainer.save_every", "trainer.keep_last",
    "trainer.save_initial", "trainer.exit_interval", "trainer.peak_tflops", "model.backend", "data.cache_dir",
)


def step_names(cfg: RunConfig) -> List[str]:
    return [s.name or s.type for s in cfg.pipeline]


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def resolved_fields(scfg: RunConfig, step) -> dict:
    """The fields that decide what a step computes: its run config (flattened, execution-only fields
    left out) and its own typed fields, as ``{"dotted.key": value}``."""
    flat = {k: v for k, v in flatten(scfg).items() if not k.startswith(EXECUTION_ONLY)}
    for f in dataclasses.fields(step):
        if f.name not in ("name", "overrides"):
            flat[f"step.{f.name}"] = getattr(step, f.name)
    return flat


def _file_identity(path: str) -> Optional[list]:
    try:
        st = os.stat(os.path.expanduser(path))
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def data_identity(scfg: RunConfig, step=None) -> dict:
    """Size and modification time of the data files a step reads (a re-prepared dataset at the same
    path changes the fingerprint); named sources are generated deterministically from their name."""
    d = scfg.data
    paths = [e.path for e in d.blend] + [e.path for p in d.phases for e in p.blend] + [e.path for e in d.valid_blend]
    if d.source == "indexed" and d.path_prefix and not d.blend and not d.phases:
        paths.append(d.path_prefix)
    out = {}
    for p in paths:
        if p.startswith(("synthetic", "bundled:")):
            continue
        out[p] = [_file_identity(p + ".bin"), _file_identity(p + ".idx")]
    if getattr(step, "input", ""):  # a file the step itself reads (e.g. an eval step's JSONL)
        out[step.input] = _file_identity(step.input)
    if d.tokenizer_path:
        tp = os.path.expanduser(d.tokenizer_path)
        out[d.tokenizer_path] = _file_identity(os.path.join(tp, "tokenizer.json") if os.path.isdir(tp) else tp)
    return out


def input_identity(checkpoint: Optional[Path]) -> Optional[dict]:
    """What a step starts from: the checkpoint folder and a hash of its completion marker (which
    records the size and checksum of every file in it)."""
    if checkpoint is None:
        return None
    marker = Path(checkpoint) / "complete.json"
    digest = hashlib.sha256(marker.read_bytes()).hexdigest() if marker.is_file() else None
    return {"checkpoint": str(Path(checkpoint).resolve()), "marker_sha256": digest}


def fingerprint(fields: dict, inp: Optional[dict], data: dict) -> str:
    blob = json.dumps({"fields": fields, "input": inp, "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _diff(old: dict, new: dict, limit: int = 6) -> List[str]:
    keys = sorted(set(old) | set(new))
    changed = [k for k in keys if old.get(k, "<unset>") != new.get(k, "<unset>")]
    out = [f"{k}: {old.get(k, '<unset>')} -> {new.get(k, '<unset>')}" for k in changed[:limit]]
    if len(changed) > limit:
        out.append(f"and {len(changed) - limit} more")
    return out


def decide(step_dir: Path, fp: str, fields: dict, inp: Optional[dict], data: dict) -> Tuple[str, str]:
    """``("skip" | "resume" | "rerun" | "run", why)`` for a step whose fingerprint is ``fp``."""
    done = _read_json(step_dir / DONE)
    attempt = _read_json(step_dir / ATTEMPT)
    prior, what = (done, "finished") if done else (attempt, "interrupted")
    if prior is None:
        if step_dir.is_dir() and any(step_dir.iterdir()):
            return "rerun", "its folder holds outputs without a fingerprint (written by an older version)"
        return "run", "first run"
    if "fingerprint" not in prior:
        return "rerun", f"its {what}-run marker has no fingerprint (written by an older version)"
    if prior.get("fingerprint") == fp:
        if done:
            return "skip", "already done, same config and input"
        return "resume", "same config and input as the interrupted run"
    reasons = _diff(prior.get("fields", {}), fields)
    if prior.get("input") != inp:
        reasons.append("its input checkpoint changed" + (" (the previous step re-ran)" if inp else ""))
    if prior.get("data") != data:
        reasons.append("its data files changed")
    return "rerun", f"changed since the {what} run: " + ("; ".join(reasons) or "fingerprint differs")


def _set_aside(run_dir: Path, step_dir: Path, old_fp: str) -> Optional[Path]:
    """Move a step's old outputs to ``<run.dir>/.superseded/<name>-<fingerprint>`` (one kept per step)."""
    if not step_dir.is_dir() or not any(step_dir.iterdir()):
        return None
    root = run_dir / SUPERSEDED
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob(f"{step_dir.name}-*"):
        shutil.rmtree(old, ignore_errors=True)
    dest = root / f"{step_dir.name}-{old_fp or 'unknown'}"
    os.replace(step_dir, dest)
    step_dir.mkdir(parents=True)
    return dest


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


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
    for i, (step, name) in enumerate(list(zip(cfg.pipeline, names))[:last]):
        scfg = step_config(cfg, step)
        step_dir = run_dir / name
        fields, inp, data = resolved_fields(scfg, step), input_identity(prev_ckpt), data_identity(scfg, step)
        if hasattr(step, "extra_inputs"):  # other checkpoints the step reads (a distill step's teacher)
            inp = {**(inp or {}), **{k: input_identity(p) for k, p in step.extra_inputs(run_dir, names).items()}}
        fp = fingerprint(fields, inp, data)
        action, why = decide(step_dir, fp, fields, inp, data)
        if rank == 0:
            verb = {"skip": "skipped", "resume": "resuming", "rerun": "re-running", "run": "running"}[action]
            print(f"[nemo-reason] step {i + 1}/{len(names)} '{name}' ({step.type}): {verb}: {why}", flush=True)
        if action == "skip":
            info = _read_json(step_dir / DONE)
            prev_ckpt = Path(info["checkpoint"]) if info.get("checkpoint") else None
            results.append(StepResult(prev_ckpt, info.get("metrics", {})))
            continue
        if rank == 0:
            if action == "rerun":
                old = _read_json(step_dir / DONE) or _read_json(step_dir / ATTEMPT) or {}
                moved = _set_aside(run_dir, step_dir, old.get("fingerprint", ""))
                if moved:
                    print(f"[nemo-reason] step '{name}': previous outputs set aside in {moved}", flush=True)
            step_dir.mkdir(parents=True, exist_ok=True)
            (step_dir / "config.yaml").write_text(to_yaml(scfg))
            _write_json_atomic(step_dir / ATTEMPT, {"type": step.type, "fingerprint": fp, "fields": fields,
                                                    "input": inp, "data": data, "started": time.time()})
        _barrier()
        ctx = StepContext(dims=dims, run_dir=run_dir, step_dir=step_dir, step_name=name,
                          input_checkpoint=prev_ckpt, rank=rank, step=step, fingerprint=fp)
        t0 = time.time()
        result = steps[step.type](scfg, ctx)
        results.append(result)
        if not result.completed:
            break
        if rank == 0:
            _write_json_atomic(step_dir / DONE, {"type": step.type, "fingerprint": fp, "fields": fields,
                                                 "input": inp, "data": data,
                                                 "checkpoint": str(result.checkpoint) if result.checkpoint else None,
                                                 "max_steps": scfg.trainer.max_steps,
                                                 "metrics": result.metrics, "seconds": time.time() - t0})
        _barrier()
        prev_ckpt = result.checkpoint
        if i + 1 < last and _stop_requested():
            # SIGTERM / the preemption signal during a step that checks no flag (one that trains
            # nothing): stop between steps; the same command continues with the next one.
            from nemo_reason.training import preemption

            preemption.record(run_dir, name, int(result.metrics.get("final_step") or 0), prev_ckpt)
            break
    if rank == 0:
        report(run_dir)
    return results


def report(run_dir: Path) -> None:
    """The run summary on the terminal and ``<run.dir>/report.html`` (nemo_reason/report/), when the
    pipeline finishes or stops. ``NEMO_REASON_REPORT``: ``html`` (the default), ``summary`` (the table
    only: no plots drawn, e.g. in the test suite) or ``off``. After the preemption signal only the table
    (the grace time is for the checkpoint). The run's outcome is already on disk: a report that fails
    says so and how to retry, and leaves the exit code alone."""
    mode = os.environ.get("NEMO_REASON_REPORT", "html").strip().lower()
    if mode in ("off", "0", "false", "no"):
        return
    from nemo_reason.report import report_run
    from nemo_reason.training import preemption

    try:
        report_run(run_dir, html=mode != "summary" and not preemption.exit_code(),
                   say=lambda text: print("\n".join(f"[nemo-reason] {line}" for line in text.splitlines()), flush=True))
    except Exception as exc:  # noqa: BLE001 - the steps' results are saved; the report is a view of them
        print(f"[nemo-reason] report failed ({type(exc).__name__}: {exc}); retry with `nemo-reason report {run_dir}`",
              flush=True)


def _stop_requested() -> bool:
    from nemo_reason.training import preemption

    return preemption.agreed()
