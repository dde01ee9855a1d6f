"""Launchers: how ``nemo-reason launch RECIPE launcher=NAME [overrides] [--dry-run]`` starts a job.

A launcher is a class registered by name in :data:`LAUNCHERS`; ``launcher.type`` (chosen on the
command line with ``launcher=local|slurm|docker``, a Hydra group in recipes/launcher/) picks one:

- ``local`` (local.py): ``nemo-reason run`` on this machine, launcher.nproc_per_node ranks;
- ``slurm`` (slurm.py): an sbatch script rendered from ``launchers/slurm.sbatch``, submitted;
- ``docker`` (docker.py): a ``docker run`` script rendered from ``launchers/docker_run.sh.tmpl``, run.

A launcher has ``detect_gpus()`` (the GPUs its ranks get per node when they run on this machine,
the default of ``launcher.gpus_per_node``; None elsewhere), ``validate(launcher_cfg)`` for its own rules,
``render(request) -> [Job]`` (pure: text and commands, nothing written or run) and
``submit(jobs, request) -> exit code``. Every job runs the same ``nemo-reason run RECIPE
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


def launch(recipe: str, overrides: List[str], cfg, dry_run: bool = False, cwd: Optional[Path] = None) -> int:
    """Render the job(s) for ``cfg.launcher.type``, print where things go, then submit (or, with
    ``dry_run``, print what would be submitted)."""
    from nemo_reason.launch.job import LaunchRequest

    launcher = load_builtin_launchers().get(cfg.launcher.type)
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
