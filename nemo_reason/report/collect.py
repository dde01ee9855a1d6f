"""Read a run folder into plain records: what each pipeline step is, how far it got, what it measured.

:func:`collect_run` reads only files the pipeline and its steps write (DESIGN.md's run layout):
``<run.dir>/config.yaml`` (the resolved run config: the pipeline's steps, in order), and per step
``<run.dir>/<step>/``: ``attempt.json`` (written when the step starts), ``done.json`` (when it
finishes: its metrics and wall time), ``metrics.jsonl`` (one record per logged optimizer step),
``metrics.json`` (prune, perplexity), ``eval.json`` (eval), ``importance.png`` (prune), the step's
own ``config.yaml`` and its checkpoints' ``meta.json`` (parameter count, architecture).

A step's status:

- ``done``: its ``done.json`` exists;
- ``running``: started (``attempt.json``), not done, and something in its folder changed in the last
  :data:`RUNNING_WINDOW_S` seconds (a step that is silent longer reads as stopped);
- ``stopped``: started, not done, quiet: interrupted (the same command resumes it), or still in a
  long silent phase;
- ``pending``: not started.

It works on a run that is still going: a ``metrics.jsonl`` line cut mid-write is skipped, files not
yet written are absent. It reads what is on disk and does not recompute fingerprints, so a step whose
config changed since it ran shows its old results until the run re-runs it. Imports no torch.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from nemo_reason.config.errors import ConfigError

RUNNING_WINDOW_S = 300.0


@dataclass
class StepInfo:
    """One pipeline step as its folder records it."""

    index: int  # 1-based position in the pipeline
    name: str
    type: str
    step_dir: Path
    status: str = "pending"  # done | running | stopped | pending
    seconds: Optional[float] = None  # wall time (so far, for a running or stopped step)
    params: Optional[int] = None  # parameters of the model the step produced (or measured)
    model: str = ""  # one line: the architecture (from the checkpoint's meta.json)
    checkpoint: Optional[str] = None  # the checkpoint it hands on
    input_checkpoint: Optional[str] = None
    step: int = 0  # last logged optimizer step
    max_steps: Optional[int] = None  # for steps that train
    entry: Dict[str, Any] = field(default_factory=dict)  # the step's pipeline entry (its own fields)
    records: List[Dict[str, Any]] = field(default_factory=list)  # metrics.jsonl
    metrics: Dict[str, Any] = field(default_factory=dict)  # done.json's metrics, or the step's metrics.json
    eval: Dict[str, Any] = field(default_factory=dict)  # eval.json of an eval step
    images: Dict[str, Path] = field(default_factory=dict)  # plots the step drew itself (prune: importance)

    @property
    def trains(self) -> bool:
        return bool(self.records)


@dataclass
class RunInfo:
    run_dir: Path
    name: str
    steps: List[StepInfo]
    collected_at: float

    @property
    def done(self) -> int:
        return sum(s.status == "done" for s in self.steps)

    @property
    def seconds(self) -> float:
        return sum(s.seconds or 0.0 for s in self.steps)

    @property
    def status(self) -> str:
        if self.steps and self.done == len(self.steps):
            return "done"
        if any(s.status == "running" for s in self.steps):
            return "running"
        return "stopped" if any(s.status != "pending" for s in self.steps) else "pending"

    def step(self, name: str) -> Optional[StepInfo]:
        return next((s for s in self.steps if s.name == name), None)


def _read_json(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_yaml(path: Path) -> Optional[dict]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return doc if isinstance(doc, dict) else None


def read_records(path: Path) -> List[Dict[str, Any]]:
    """The records of a ``metrics.jsonl``; a line cut by a crash or a write in progress is skipped."""
    out = []
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _newest_mtime(step_dir: Path) -> Optional[float]:
    """The latest modification time of the step folder's files (and its checkpoints' folders)."""
    newest = None
    try:
        entries = list(step_dir.iterdir())
        ckpts = step_dir / "checkpoints"
        if ckpts.is_dir():
            entries += list(ckpts.iterdir())
    except OSError:
        return None
    for p in entries:
        try:
            m = p.stat().st_mtime
        except OSError:
            continue
        newest = m if newest is None else max(newest, m)
    return newest


def describe_model(model) -> str:
    """A few words on a checkpoint's architecture: type, layers (hybrid pattern), hidden size."""
    if model is None:
        return ""
    words = f"{model.type} {model.num_layers}L h{model.hidden_size}"
    if model.type == "hybrid" and model.hybrid_pattern:
        words += f" {model.hybrid_pattern}"
    if getattr(model, "num_moe_experts", None):
        words += f" {model.num_moe_experts} experts"
    return words


def _checkpoint_facts(path: Optional[str]) -> tuple:
    """(params, model words) of a checkpoint folder, or (None, "") when it cannot be read."""
    if not path:
        return None, ""
    from nemo_reason.checkpoint.meta import read_meta

    try:
        meta = read_meta(path)
    except (OSError, ValueError, KeyError, TypeError, ConfigError):
        return None, ""
    return meta.params, describe_model(meta.model)


def _local(path: Optional[str], run_dir: Path) -> Optional[str]:
    """A checkpoint path as recorded (absolute, where the run wrote it), or, when the run folder has
    moved or been copied since, the same ``<step>/checkpoints/iter_*`` under ``run_dir``."""
    if not path or Path(path).is_dir():
        return path
    p = Path(path)
    if p.parent.name == "checkpoints":
        here = run_dir / p.parent.parent.name / "checkpoints" / p.name
        if here.is_dir():
            return str(here)
    return path


def _newest_checkpoint(step_dir: Path) -> Optional[str]:
    from nemo_reason.checkpoint.marker import list_complete

    done = list_complete(step_dir / "checkpoints")
    return str(done[-1]) if done else None


def _max_steps(run_cfg: dict, entry: dict, step_cfg: Optional[dict]) -> Optional[int]:
    if step_cfg is not None:
        return (step_cfg.get("trainer") or {}).get("max_steps")
    over = entry.get("overrides") or {}
    if "trainer.max_steps" in over:
        return over["trainer.max_steps"]
    return (run_cfg.get("trainer") or {}).get("max_steps")


def _collect_step(run_cfg: dict, index: int, entry: dict, run_dir: Path, now: float) -> StepInfo:
    name = entry.get("name") or entry.get("type") or f"step{index}"
    info = StepInfo(index=index, name=name, type=str(entry.get("type", "?")), step_dir=run_dir / name,
                    entry={k: v for k, v in entry.items() if k not in ("type", "name")})
    d = info.step_dir
    done, attempt = _read_json(d / "done.json"), _read_json(d / "attempt.json")
    step_cfg = _read_yaml(d / "config.yaml")
    info.max_steps = _max_steps(run_cfg, entry, step_cfg)
    info.records = read_records(d / "metrics.jsonl")
    if info.records:
        info.step = max(int(r.get("step", 0) or 0) for r in info.records)
    own = _read_json(d / "metrics.json")
    info.eval = _read_json(d / "eval.json") or {}
    if (d / "importance.png").is_file():
        info.images["importance"] = d / "importance.png"
    started = (attempt or {}).get("started")
    marker = done or attempt or {}
    inp = marker.get("input") or {}
    info.input_checkpoint = inp.get("checkpoint") if isinstance(inp, dict) else None
    if done is not None:
        info.status = "done"
        info.seconds = done.get("seconds")
        info.metrics = dict(done.get("metrics") or {})
        info.checkpoint = done.get("checkpoint")
    elif attempt is not None:
        newest = _newest_mtime(d)
        recent = newest is not None and now - newest < RUNNING_WINDOW_S
        info.status = "running" if recent else "stopped"
        if started:
            info.seconds = max(0.0, (now if recent else (newest or now)) - started)
        info.metrics = dict(own or {})
        info.checkpoint = _newest_checkpoint(d)
    if isinstance(own, dict):
        for k, v in own.items():
            info.metrics.setdefault(k, v)
    if info.status == "pending":
        return info
    # The model this step leaves behind: its own checkpoint, else the one it measured.
    params, words = _checkpoint_facts(_local(info.checkpoint or info.input_checkpoint, run_dir))
    info.params = params if params is not None else info.metrics.get("params")
    info.model = words
    if info.status == "done" and info.checkpoint is None and info.input_checkpoint:
        info.checkpoint = info.input_checkpoint
    return info


def collect_run(run_dir: str | os.PathLike) -> RunInfo:
    """Every step of the run in ``run_dir``, in pipeline order, with what its folder holds."""
    run_dir = Path(run_dir).expanduser()
    cfg_path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run folder (give the run.dir of a `nemo-reason run`)")
    run_cfg = _read_yaml(cfg_path)
    if run_cfg is None:
        raise ConfigError(f"{run_dir}: no readable config.yaml: not a run folder (the pipeline writes "
                          "<run.dir>/config.yaml when it starts)")
    pipeline = run_cfg.get("pipeline") or []
    if not isinstance(pipeline, list) or not all(isinstance(e, dict) for e in pipeline):
        raise ConfigError(f"{cfg_path}: its pipeline is not a list of steps")
    now = time.time()
    steps = [_collect_step(run_cfg, i + 1, e, run_dir, now) for i, e in enumerate(pipeline)]
    name = (run_cfg.get("run") or {}).get("name") or run_dir.name
    return RunInfo(run_dir=run_dir, name=str(name), steps=steps, collected_at=now)
