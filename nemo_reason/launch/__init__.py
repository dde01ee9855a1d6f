"""Launchers: how ``nemo-reason launch RECIPE launcher=NAME [overrides] [--dry-run]`` starts a job.

A launcher is a class registered by name in :data:`LAUNCHERS`; ``launcher.type`` (chosen on the
command line with ``launcher=local|slurm|docker``, a Hydra group in recipes/launcher/) picks one:

- ``local`` (local.py): ``nemo-reason run`` on this machine, launcher.nproc_per_node ranks;
- ``slurm`` (slurm.py): an sbatch script rendered from ``launchers/slurm.sbatch``, submitted;
- ``docker`` (docker.py): a ``docker run`` script rendered from ``launchers/docker_run.sh.tmpl``, run.

A launcher has ``detect_gpus()`` (the GPUs its ranks get per node when they run on this machine,
the default of ``launcher.gpus_per_node``; None elsewhere), ``validate(launcher_cfg)`` for its own rules,
``render(request) -> [Job]`` (pure: text and commands, nothing written or run) and
``submit(jobs, request) -> exit code``. :func:`resolve_launcher` fills the per-node sizes from the
launcher's ``detect_gpus()`` and checks its rules (config validation imports no launcher and looks
at no machine); ``nemo-reason run`` and ``launch`` call it after composing. Every job runs the same ``nemo-reason run RECIPE
overrides`` inside (job.py), so a recipe and its overrides mean the same under every launcher.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import List, Optional

from nemo_reason.registry import Registry

LAUNCHERS: Registry = Registry("launcher")

_BUILTIN = ("nemo_reason.launch.local", "nemo_reason.launch.slurm", "nemo_reason.launch.docker")


def register_launcher(name: str, doc: str = ""):
    """Class decorator: registers one instance of the class under ``name``."""
    def deco(cls):
        LAUNCHERS.register(name, doc or (cls.__doc__ or "").strip().splitlines()[0])(cls())
        return cls

    return deco


def load_builtin_launchers() -> Registry:
    for mod in _BUILTIN:
        importlib.import_module(mod)
    return LAUNCHERS


def _launcher_of(cfg):
    from nemo_reason.config.errors import ConfigError

    try:
        return load_builtin_launchers().get(cfg.launcher.type)
    except KeyError as err:
        raise ConfigError(f"launcher.type: {err.args[0]}; select one with launcher=NAME") from None


def resolve_launcher(cfg):
    """Fill ``launcher.gpus_per_node`` (when null: the GPUs the launcher's ranks get on this machine)
    and ``nproc_per_node`` (one rank per GPU, or 1), then validate again: the world size may have
    changed. Returns ``cfg``; ConfigError for an unknown launcher type or a broken rule."""
    lc = cfg.launcher
    launcher = _launcher_of(cfg)
    if lc.gpus_per_node is None:
        lc.gpus_per_node = launcher.detect_gpus()
    lc.resolve()
    if lc.nproc_per_node is None:  # a launcher whose ranks run elsewhere and no gpus_per_node: 1 rank
        lc.nproc_per_node = lc.gpus_per_node or 1
    cfg.validate()
    return cfg


def validate_launcher(cfg) -> None:
    """The rules of the launcher ``launcher.type`` names (``launcher=slurm`` needs gpus_per_node, ...)."""
    _launcher_of(cfg).validate(cfg.launcher)


def launch(recipe: str, overrides: List[str], cfg, dry_run: bool = False, cwd: Optional[Path] = None) -> int:
    """Render the job(s) for ``cfg.launcher.type``, print where things go, then submit (or, with
    ``dry_run``, print what would be submitted)."""
    from nemo_reason.launch.job import LaunchRequest

    resolve_launcher(cfg)
    validate_launcher(cfg)
    launcher = _launcher_of(cfg)
    req = LaunchRequest.create(recipe, overrides, cfg, Path(cwd or os.getcwd()))
    jobs = launcher.render(req)
    for job in jobs:
        if dry_run:
            if job.script_path is not None:
                print(f"# ---- {job.script_path} ----")
                print(job.script, end="" if job.script.endswith("\n") else "\n")
            print(f"# ---- submit: {job.submit_line()}")
    print(f"[nemo-reason] {cfg.launcher.type}: {recipe} -> run dir {req.run_dir}", flush=True)
    for job in jobs:
        print(f"[nemo-reason] logs: {job.logs}" + (f" (script {job.script_path})" if job.script_path else ""),
              flush=True)
    if dry_run:
        print("[nemo-reason] dry run: nothing submitted", flush=True)
        return 0
    req.log_dir.mkdir(parents=True, exist_ok=True)
    for job in jobs:
        job.write()
    return launcher.submit(jobs, req)
