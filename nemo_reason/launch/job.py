"""What every launcher shares: the request, the rendered job, the command the job runs, templates.

The job runs ``nemo-reason run RECIPE overrides`` with the user's overrides, plus what must not
depend on where it runs: ``run.dir`` made absolute and, for launchers whose ranks run elsewhere
(slurm, docker), the per-node sizes resolved at submission pinned (``launcher.nproc_per_node``,
``launcher.gpus_per_node``), so the job composes exactly the config that was validated here.

Templates in ``launchers/`` (next to ``recipes/``) use ``{{name}}`` placeholders; rendering fails
on a placeholder without a value and on a value without a placeholder.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from nemo_reason.config.schema import ConfigError, RunConfig
from nemo_reason.data.blend import is_named


def launchers_dir() -> Path:
    """``launchers/`` at the top of the repository (or ``$NEMO_REASON_LAUNCHERS``, or the copy
    installed under ``<prefix>/share/nemo_reason/launchers``)."""
    env = os.environ.get("NEMO_REASON_LAUNCHERS")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[2] / "launchers",
                   Path(sys.prefix) / "share" / "nemo_reason" / "launchers"]
    for c in candidates:
        if c.is_dir():
            return c
    raise ConfigError("cannot find the launchers/ folder: set NEMO_REASON_LAUNCHERS=/path/to/launchers "
                      "(it sits at the top of the nemo_reason repository)")


def render_template(name: str, values: Dict[str, object]) -> str:
    text = (launchers_dir() / name).read_text()
    used = set()

    def sub(m):
        key = m.group(1)
        if key not in values:
            raise KeyError(f"launchers/{name}: no value for {{{{{key}}}}}")
        used.add(key)
        return str(values[key])

    out = re.sub(r"\{\{(\w+)\}\}", sub, text)
    unused = set(values) - used
    if unused:
        raise KeyError(f"launchers/{name}: no placeholder for {', '.join(sorted(unused))}")
    return out


def override_key(override: str) -> str:
    """``+a.b=1`` / ``~a.b`` / ``a.b=1`` -> ``a.b``."""
    return override.lstrip("+~").split("=", 1)[0]


def shell_join(args: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in args)


def cache_dir(cfg: RunConfig) -> Path:
    """Where generated corpora and dataset index caches go: data.indexed.cache_root's rule
    (data.cache_dir, $NEMO_REASON_CACHE, ~/.cache/nemo_reason), without importing Megatron."""
    raw = cfg.data.cache_dir or os.environ.get("NEMO_REASON_CACHE", str(Path.home() / ".cache" / "nemo_reason"))
    return Path(raw).expanduser().resolve()


@dataclass
class LaunchRequest:
    recipe: str
    overrides: List[str]
    cfg: RunConfig
    cwd: Path
    # Submission time, for file names: YYYYmmdd-HHMMSS.
    stamp: str

    @classmethod
    def create(cls, recipe: str, overrides: Sequence[str], cfg: RunConfig, cwd: Path) -> "LaunchRequest":
        return cls(recipe, list(overrides), cfg, Path(cwd).resolve(), time.strftime("%Y%m%d-%H%M%S"))

    @property
    def run_dir(self) -> Path:
        return (self.cwd / self.cfg.run.dir).resolve()

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def launch_dir(self) -> Path:
        return self.run_dir / "launch"

    @property
    def name(self) -> str:
        return self.cfg.launcher.job_name or self.cfg.run.name

    def recipe_arg(self) -> str:
        p = Path(self.recipe)
        if p.suffix in (".yaml", ".yml") and (self.cwd / p).is_file():
            return str((self.cwd / p).resolve())
        return self.recipe

    def run_args(self, pin_sizes: bool, extra: Sequence[str] = ()) -> List[str]:
        """``run RECIPE overrides`` as the job runs it (see the module docstring)."""
        given = {override_key(o) for o in self.overrides if not o.startswith("~")}  # ~key: back to null
        args = ["run", self.recipe_arg()]
        args += [o for o in self.overrides if override_key(o) != "run.dir"]
        args.append(f"run.dir={self.run_dir}")
        if pin_sizes:
            lc = self.cfg.launcher
            for key, value in (("launcher.nproc_per_node", lc.nproc_per_node),
                               ("launcher.gpus_per_node", lc.gpus_per_node)):
                if key not in given and value is not None:
                    args.append(f"{key}={value}")
        args += list(extra)
        return args


def nemo_reason_command(in_container: bool) -> List[str]:
    """The ``nemo-reason`` of this installation (a job may start without this venv on PATH), or
    the image's own inside a container."""
    if in_container:
        return ["nemo-reason"]
    exe = Path(sys.executable).parent / "nemo-reason"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "nemo_reason.cli"]


@dataclass
class Job:
    """One rendered job: an optional script to write, the command that submits or runs it."""

    name: str
    submit_argv: List[str]
    logs: str
    script_path: Optional[Path] = None
    script: str = ""
    # Pipeline step this job runs up to (one job per step), or "" for the whole pipeline.
    stop_after: str = ""
    meta: Dict[str, str] = field(default_factory=dict)

    def submit_line(self) -> str:
        return shell_join(self.submit_argv)

    def write(self) -> None:
        if self.script_path is None:
            return
        self.script_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.script_path.with_name(self.script_path.name + ".tmp")
        tmp.write_text(self.script)
        tmp.chmod(0o755)
        os.replace(tmp, self.script_path)


def mounts(req: LaunchRequest) -> List[str]:
    """Container mounts, ``SRC:DST[:FLAGS]`` at the same paths inside: the working directory, the
    run dir, the data cache and the folders of the indexed datasets (``data.path_prefix`` and every
    blend path; each unless already under one mounted), then ``launcher.container_mounts``."""
    cfg = req.cfg
    wanted = [(req.cwd, ""), (req.run_dir, ""), (cache_dir(cfg), "")]
    if cfg.data.path_prefix:
        wanted.append((Path(cfg.data.path_prefix).expanduser().resolve().parent, "ro"))
    blends = [p.blend for p in cfg.data.phases] + [cfg.data.blend, cfg.data.valid_blend]
    for e in (e for b in blends for e in b if not is_named(e.path)):  # each blend prefix's folder
        wanted.append((Path(e.path).expanduser().resolve().parent, "ro"))
    out: List[str] = []
    seen: List[Path] = []
    for path, flags in wanted:
        if any(path == s or s in path.parents for s in seen):
            continue
        seen.append(path)
        out.append(f"{path}:{path}" + (f":{flags}" if flags else ""))
    return out + list(cfg.launcher.container_mounts)
