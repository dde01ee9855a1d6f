"""``launcher=docker``: one node, ``docker run`` of the nemo_reason image (see ``Dockerfile``).

Renders ``<run.dir>/launch/<name>-<stamp>.sh`` from ``launchers/docker_run.sh.tmpl``::

    docker run --rm --init --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 --gpus all \\
      --name nemo-reason-NAME-STAMP -v CWD:CWD -v RUN_DIR:RUN_DIR ... -e ... -w CWD \\
      IMAGE nemo-reason run RECIPE overrides run.dir=RUN_DIR launcher.nproc_per_node=N ...

and runs it in the foreground, its output also in ``<run.dir>/logs/``. Paths are mounted at the
same place inside (working directory, run dir, data cache, an indexed dataset's folder read-only,
``launcher.container_mounts``), so the run dir and the checkpoints are the host's. ``--gpus all``
is left out when ``launcher.gpus_per_node=0``. ``launcher.nproc_per_node`` ranks start inside, as
``nemo-reason run`` starts them anywhere.

Signals: the script ``exec``s ``docker run``, so a signal to it (or to ``nemo-reason launch``,
which forwards the preemption signal and SIGTERM) reaches the docker client, whose signal proxy
passes it into the container; ``docker stop`` sends SIGTERM there itself. Inside, ``--init``
(tini, PID 1) passes it to ``nemo-reason run``, which passes it to its ranks: they finish the
step, save and exit 75 (training/preemption.py). ``--stop-timeout=launcher.preempt_warning_s``
gives them that long before docker's SIGKILL (docker's default: 10 s, too short for a save).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List

from nemo_reason.config.schema import ConfigError
from nemo_reason.launch import register_launcher
from nemo_reason.launch.job import (Job, LaunchRequest, cache_dir, mounts, nemo_reason_command, render_template,
                                    shell_join)
from nemo_reason.launch.local import run_teed

TEMPLATE = "docker_run.sh.tmpl"


def container_name(req: LaunchRequest) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"nemo-reason-{req.name}-{req.stamp}")


def stop_timeout_s(lc) -> int:
    """Seconds between ``docker stop``'s SIGTERM and its SIGKILL: the warning's lead time, which is
    what a run is given to save on SLURM too (at least docker's own 10 s)."""
    return max(10, int(lc.preempt_warning_s))


def docker_options(req: LaunchRequest) -> List[str]:
    lc = req.cfg.launcher
    opts = ["--gpus all"] if lc.gpus_per_node else []
    opts.append(f"--name {container_name(req)}")
    # `docker stop` (SIGTERM) waits this long for the checkpoint before it kills.
    opts.append(f"--stop-timeout {stop_timeout_s(lc)}")
    opts += [f"-v {shell_join([m])}" for m in mounts(req)]
    env = {"NEMO_REASON_CACHE": str(cache_dir(req.cfg))}  # the container's HOME differs
    if lc.preempt_signal:
        env["NEMO_REASON_PREEMPT_SIGNAL"] = lc.preempt_signal
    env.update({str(k): str(v) for k, v in lc.env.items()})
    opts += [f"-e {shell_join([f'{k}={v}'])}" for k, v in env.items()]
    opts.append(f"-w {shell_join([str(req.cwd)])}")
    return opts


def render_script(req: LaunchRequest) -> str:
    lc = req.cfg.launcher
    return render_template(TEMPLATE, {
        "launch_command": shell_join(["nemo-reason", "launch", req.recipe, *req.overrides]),
        "preempt_signal": lc.preempt_signal or "USR1",
        "stop_timeout": stop_timeout_s(lc),
        "container_name": container_name(req),
        "run_dir": shell_join([str(req.run_dir)]),
        "docker_options": " \\\n  ".join(docker_options(req)),
        "image": shell_join([lc.container_image]),
        "run_command": shell_join(nemo_reason_command(True) + req.run_args(pin_sizes=True)),
    })


@register_launcher("docker", "docker run on this node: all GPUs, NGC's flags, run dir and data mounted")
class DockerLauncher:
    def detect_gpus(self) -> int:
        """The NVIDIA GPUs `--gpus all` gives the container (this machine's /dev/nvidiaN), whether or
        not the torch outside has CUDA."""
        return sum(1 for p in Path("/dev").glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name))

    def validate(self, lc) -> None:
        if lc.nodes != 1:
            raise ConfigError(f"launcher=docker runs on one node (launcher.nodes={lc.nodes}); "
                              "use launcher=slurm with launcher.container_image for several")
        if not lc.container_image:
            raise ConfigError("launcher=docker needs launcher.container_image (build it: docker build -t "
                              "nemo_reason .)")

    def render(self, req: LaunchRequest) -> List[Job]:
        path = req.launch_dir / f"{req.name}-{req.stamp}.sh"
        log = req.log_dir / f"{req.name}-docker-{req.stamp}.log"
        return [Job(req.name, ["bash", str(path)], logs=str(log), script_path=path,
                    script=render_script(req), meta={"log": str(log)})]

    def submit(self, jobs: List[Job], req: LaunchRequest) -> int:
        return run_teed(jobs[0].submit_argv, req, jobs[0].meta["log"])
