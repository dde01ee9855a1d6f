"""``launcher=slurm``: render an sbatch script from ``launchers/slurm.sbatch.tmpl`` and submit it.

The script (one per job, kept in ``<run.dir>/launch/``, re-submittable as it is):

- asks for ``launcher.nodes`` nodes with ``launcher.gpus_per_node`` GPUs and one task per rank
  (``launcher.nproc_per_node`` per node), or one task per node with ``launcher.elastic=true``;
  partition, account, time, exclusive, cpus per task, extra ``launcher.sbatch_args``;
- writes one log per job id, ``<run.dir>/logs/<name>-<jobid>.out``, appended to after a requeue;
- sets the rendezvous (MASTER_ADDR: the allocation's first node; MASTER_PORT: launcher.master_port
  or 20000 + job id % 20000), the usual NCCL settings and ``launcher.env``;
- runs ``srun [pyxis --container-image/--container-mounts] nemo-reason run RECIPE overrides``;
  every task is one rank (``launched_by_torchrun_or_srun``), or a node's elastic agent;
- handles the time limit and preemption: ``--signal=B:USR1@launcher.preempt_warning_s`` reaches
  the script, which forwards it to the ranks (training/preemption.py: finish the step, checkpoint,
  exit) and requeues itself (``--requeue``, ``scontrol requeue``); the requeued job resumes.

``launcher.chain_steps=true`` submits one job per pipeline step (``run.stop_after=STEP``), each
``--dependency=afterok`` on the previous one. ``launcher.dependency`` chains the first job to
existing ones. Submission prints ``Submitted batch job N`` per job, as sbatch does.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from typing import List

from nemo_reason.config.schema import ConfigError
from nemo_reason.launch import register_launcher
from nemo_reason.launch.job import (Job, LaunchRequest, mounts, nemo_reason_command, render_template,
                                    shell_join)
from nemo_reason.launch.local import NODE_AGENT_ENV

TEMPLATE = "slurm.sbatch.tmpl"


def _directives(req: LaunchRequest, job_name: str) -> List[str]:
    lc = req.cfg.launcher
    opts = [f"--job-name={job_name}", f"--nodes={lc.nodes}", f"--ntasks-per-node={tasks_per_node(lc)}"]
    if lc.gpus_per_node:
        opts.append(f"--gpus-per-node={lc.gpus_per_node}")
    if lc.cpus_per_task:
        opts.append(f"--cpus-per-task={lc.cpus_per_task}")
    for key in ("partition", "account", "time"):
        if getattr(lc, key):
            opts.append(f"--{key}={getattr(lc, key)}")
    if lc.exclusive:
        opts.append("--exclusive")
    opts += [f"--output={req.log_dir}/%x-%j.out",
             "--open-mode=append",  # a requeued job goes on in the same log
             f"--chdir={req.cwd}"]
    if lc.preempt_signal:
        opts += ["--requeue", f"--signal=B:{lc.preempt_signal}@{lc.preempt_warning_s}"]
    opts += list(lc.sbatch_args)
    return [f"#SBATCH {o}" for o in opts]


def time_limit_seconds(limit: str) -> int:
    """SLURM's time syntax: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    days, _, rest = limit.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if days:
        h, m, s = (parts + [0, 0])[:3]
    else:
        h, m, s = {1: [0, parts[0], 0], 2: [0, *parts], 3: parts}[len(parts)]
    return ((int(days or 0) * 24 + h) * 60 + m) * 60 + s


def tasks_per_node(lc) -> int:
    return 1 if lc.elastic else lc.nproc_per_node


def _srun_command(req: LaunchRequest, stop_after: str) -> str:
    lc = req.cfg.launcher
    opts = [f"--ntasks-per-node={tasks_per_node(lc)}", "--kill-on-bad-exit=1"]
    if lc.cpus_per_task:
        opts.append(f"--cpus-per-task={lc.cpus_per_task}")
    if lc.container_image:
        opts += [f"--container-image={lc.container_image}",
                 f"--container-mounts={','.join(mounts(req))}",
                 f"--container-workdir={req.cwd}"]
    opts += list(lc.srun_args)
    extra = [f"run.stop_after={stop_after}"] if stop_after else []
    argv = ["srun", *opts, *nemo_reason_command(bool(lc.container_image)), *req.run_args(True, extra)]
    return " \\\n  ".join([shell_join(argv[: 1 + len(opts)]), shell_join(argv[1 + len(opts):])])


def _env_exports(req: LaunchRequest) -> str:
    lc = req.cfg.launcher
    env = {}
    if lc.preempt_signal:
        env["NEMO_REASON_PREEMPT_SIGNAL"] = lc.preempt_signal
    if lc.elastic:
        env[NODE_AGENT_ENV] = "1"
    if lc.container_image:
        from nemo_reason.launch.job import cache_dir

        env["NEMO_REASON_CACHE"] = str(cache_dir(req.cfg))  # the container's HOME differs
    env.update({str(k): str(v) for k, v in lc.env.items()})
    return "\n".join(f"export {k}={shell_join([v])}" for k, v in env.items())


def render_script(req: LaunchRequest, job_name: str, stop_after: str = "") -> str:
    lc = req.cfg.launcher
    cmd = ["nemo-reason", "launch", req.recipe, *req.overrides]
    return render_template(TEMPLATE, {
        "launch_command": shell_join(cmd) + (f"  (job for step {stop_after})" if stop_after else ""),
        "sbatch_directives": "\n".join(_directives(req, job_name)),
        "run_dir": shell_join([str(req.run_dir)]),
        "preempt_signal": lc.preempt_signal,
        "max_requeues": lc.max_requeues,
        "master_port": lc.master_port or "$((20000 + SLURM_JOB_ID % 20000))",
        "env_exports": _env_exports(req),
        "tasks_per_node": tasks_per_node(lc),
        "srun_command": _srun_command(req, stop_after),
    })


@register_launcher("slurm", "sbatch a rendered script (srun one task per rank, pyxis containers, requeue)")
class SlurmLauncher:
    def detect_gpus(self):
        return None  # the ranks run on the cluster's nodes, not here: launcher.gpus_per_node says

    def validate(self, lc) -> None:
        if lc.gpus_per_node is None:
            raise ConfigError("launcher=slurm needs launcher.gpus_per_node (8 on a DGX H100; 0 on CPU "
                              "nodes, with launcher.nproc_per_node)")
        if lc.preempt_signal and lc.time and lc.preempt_warning_s >= time_limit_seconds(lc.time):
            raise ConfigError(f"launcher.preempt_warning_s={lc.preempt_warning_s} is not below the time limit "
                              f"launcher.time={lc.time}")

    def render(self, req: LaunchRequest) -> List[Job]:
        lc = req.cfg.launcher
        steps = [s.name or s.type for s in req.cfg.pipeline] if lc.chain_steps else [""]
        if lc.chain_steps and req.cfg.run.stop_after:
            steps = steps[: steps.index(req.cfg.run.stop_after) + 1]
        jobs = []
        for i, step in enumerate(steps):
            name = f"{req.name}-{step}" if step else req.name
            path = req.launch_dir / f"{name}-{req.stamp}.sbatch"
            argv = ["sbatch", "--parsable"]
            dep = lc.dependency if i == 0 else "afterok:{previous}"
            if dep:
                argv.append(f"--dependency={dep}")
            jobs.append(Job(name, argv + [str(path)], logs=f"{req.log_dir}/{name}-<jobid>.out",
                            script_path=path, script=render_script(req, name, step), stop_after=step))
        return jobs

    def submit(self, jobs: List[Job], req: LaunchRequest) -> int:
        if shutil.which("sbatch") is None:
            print("nemo-reason: error: sbatch is not on PATH (not a SLURM login node?); "
                  "--dry-run prints the script", file=sys.stderr)
            return 1
        previous = ""
        for job in jobs:
            argv = [a.replace("{previous}", previous) for a in job.submit_argv]
            proc = subprocess.run(argv, cwd=req.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                print(f"nemo-reason: error: {shell_join(argv)} failed ({proc.returncode}):\n{proc.stderr.strip()}",
                      file=sys.stderr)
                return proc.returncode
            previous = proc.stdout.strip().split(";")[0]
            print(f"Submitted batch job {previous}", flush=True)
            print(f"[nemo-reason] log: {req.log_dir}/{job.name}-{previous}.out", flush=True)
        return 0
