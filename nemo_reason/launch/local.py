"""Spawn ``launcher.nproc_per_node`` ranks on this machine with torch's elastic launcher.

This is what ``torchrun --standalone --nproc-per-node N -m nemo_reason.worker CONFIG`` does,
from Python: a c10d rendezvous on localhost, one worker process per rank with RANK/WORLD_SIZE/
LOCAL_RANK/MASTER_ADDR/MASTER_PORT set, and the first failure reported with its rank.

On SLURM with ``launcher.elastic=true`` the batch script starts one ``nemo-reason run`` per node
(``NEMO_REASON_NODE_AGENT=1``); each spawns its node's ranks the same way, with a rendezvous on
the allocation's first node (:func:`node_rendezvous`), as ``srun torchrun --nnodes ...`` would.

The spawning process passes the preemption signal (``launcher.preempt_signal``) and SIGTERM
(``kill``, ``docker stop``, a pod eviction: training/preemption.py) on to its ranks, and reports a
run that stopped for them (exit code 75) as such rather than as a failure. Torch elastic's own
SIGTERM handler (kill the workers, raise) is switched off for that: the ranks decide when to stop.

``launcher=local`` for ``nemo-reason launch`` (:class:`LocalLauncher`) runs ``nemo-reason run``
here, with its output also written to ``<run.dir>/logs/``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from nemo_reason.config.schema import ConfigError
from nemo_reason.launch import register_launcher
from nemo_reason.launch.job import Job, LaunchRequest, nemo_reason_command
from nemo_reason.ports import free_port

NODE_AGENT_ENV = "NEMO_REASON_NODE_AGENT"
# A configuration error, as the CLI's exit code (worker.run_worker returns it when the preflight fails).
EXIT_CONFIG = 2
# Same value as training.preemption.EXIT_PREEMPTED (not imported: that module imports torch).
EXIT_PREEMPTED = 75


def launched_by_torchrun_or_srun() -> bool:
    """True inside a rank already started by torchrun/elastic or by ``srun`` with several tasks."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return True
    if env.get(NODE_AGENT_ENV) == "1":
        return False  # one task per node (launcher.elastic): this process spawns the node's ranks
    return "SLURM_STEP_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1


def threads_per_rank(nproc: int) -> int:
    return max(1, (os.cpu_count() or 1) // nproc)


@dataclass(frozen=True)
class Rendezvous:
    """A multi-node elastic rendezvous: this node among ``nnodes``, the c10d store at ``endpoint``."""

    nnodes: int
    node_rank: int
    endpoint: str
    run_id: str


def node_rendezvous(nodes: int) -> Rendezvous:
    """This node's rendezvous inside a SLURM job started with ``launcher.elastic=true`` (the batch
    script sets MASTER_ADDR to the first node and MASTER_PORT)."""
    env = os.environ
    if env.get(NODE_AGENT_ENV) != "1" or "SLURM_JOB_ID" not in env:
        raise ConfigError(
            f"launcher.nodes={nodes}: a multi-node run starts one rank per task under srun or torchrun; "
            "submit it with `nemo-reason launch RECIPE launcher=slurm launcher.nodes=N ...`")
    got = int(env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES", "1")))
    if got != nodes:
        raise ConfigError(f"launcher.nodes={nodes} but this SLURM job has {got} node(s)")
    return Rendezvous(nodes, int(env.get("SLURM_NODEID", "0")),
                      f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}", f"slurm-{env['SLURM_JOB_ID']}")


def forwarded_signals(signal_name: str) -> List[int]:
    """The signals a process that starts ranks passes on to them: the preemption signal, and SIGTERM
    always (training/preemption.py catches both)."""
    signums = [signal.SIGTERM]
    if signal_name and getattr(signal, "SIG" + signal_name) != signal.SIGTERM:
        signums.insert(0, getattr(signal, "SIG" + signal_name))
    return signums


def _forward_signal(signal_name: str, received: Optional[list] = None):
    """Pass SIG<signal_name> and SIGTERM on to the rank processes (appending each one to ``received``);
    returns a function that undoes it."""

    def forward(sig, frame):  # noqa: ARG001
        import psutil

        if received is not None:
            received.append(sig)
        for child in psutil.Process().children(recursive=True):
            try:
                if "nemo_reason.worker" in " ".join(child.cmdline()):
                    child.send_signal(sig)
            except psutil.Error:
                pass

    previous = {signum: signal.signal(signum, forward) for signum in forwarded_signals(signal_name)}
    return lambda: [signal.signal(signum, handler) for signum, handler in previous.items()]


def spawn(config_path: Path, nproc: int, master_port: int = 0, rdzv: Optional[Rendezvous] = None,
          forward_signal: str = "") -> int:
    """Run the worker on ``nproc`` local ranks (of ``rdzv.nnodes`` nodes); returns 0 on success,
    75 when the ranks stopped for the preemption signal or SIGTERM (with a checkpoint), 128 + the
    signal when a forwarded signal stopped them before they could save (start-up), 1 if a rank failed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if rdzv is None:
        rdzv = Rendezvous(1, 0, f"127.0.0.1:{master_port or free_port()}", f"nemo-reason-{uuid.uuid4().hex[:8]}")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_rank(nproc)))
    lc = LaunchConfig(
        min_nodes=rdzv.nnodes,
        max_nodes=rdzv.nnodes,
        nproc_per_node=nproc,
        run_id=rdzv.run_id,
        rdzv_backend="c10d",
        rdzv_endpoint=rdzv.endpoint,
        rdzv_configs={"is_host": rdzv.node_rank == 0},
        max_restarts=0,
        monitor_interval=0.2,
        start_method="spawn",
        # Not SIGTERM nor the preemption signal: torch elastic would kill the workers at once (and
        # raise here); _forward_signal passes them on and the ranks stop after their step instead.
        signals_to_handle=",".join(s for s in ("SIGINT", "SIGHUP", "SIGQUIT")
                                   if getattr(signal, s) not in forwarded_signals(forward_signal)),
    )
    received: list = []
    restore = _forward_signal(forward_signal, received)
    try:
        elastic_launch(lc, entrypoint=sys.executable)("-m", "nemo_reason.worker", str(config_path))
    except ChildFailedError as exc:
        codes = [getattr(f, "exitcode", None) for f in exc.failures.values()]
        if all(c == EXIT_PREEMPTED or (c is not None and c < 0) for c in codes):
            if EXIT_PREEMPTED in codes:
                return EXIT_PREEMPTED  # every rank stopped for the signal (the others, just after, by the agent)
            if received:  # the ranks were still starting: killed by it, nothing to save
                print(f"[nemo-reason] {signal.Signals(received[0]).name} before the ranks had started: "
                      "stopped, nothing to save", file=sys.stderr)
                return 128 + received[0]
        if EXIT_CONFIG in codes and all(c == EXIT_CONFIG or (c is not None and c < 0) for c in codes):
            return EXIT_CONFIG  # the ranks' preflight refused this machine (rank 0 printed why)
        first = next(iter(exc.failures.values()), None)
        print(f"[nemo-reason] rank {getattr(first, 'local_rank', '?')} failed "
              f"(exit code {getattr(first, 'exitcode', '?')}); see its output above", file=sys.stderr)
        return 1
    finally:
        restore()
    return 0


@register_launcher("local", "nemo-reason run on this machine: launcher.nproc_per_node ranks (torch elastic)")
class LocalLauncher:
    def detect_gpus(self) -> int:
        from nemo_reason.backend import cuda_device_count

        return cuda_device_count()

    def validate(self, lc) -> None:
        if lc.nodes != 1:
            raise ConfigError(f"launcher=local runs on one node (launcher.nodes={lc.nodes}); "
                              "use launcher=slurm for several")

    def render(self, req: LaunchRequest) -> List[Job]:
        argv = nemo_reason_command(False) + req.run_args(pin_sizes=False)
        log = req.log_dir / f"{req.name}-local-{req.stamp}.log"
        return [Job(req.name, argv, logs=str(log), meta={"log": str(log)})]

    def submit(self, jobs: List[Job], req: LaunchRequest) -> int:
        return run_teed(jobs[0].submit_argv, req, jobs[0].meta["log"])


def run_teed(argv: List[str], req: LaunchRequest, log_path: str) -> int:
    """Run ``argv`` in the foreground, its output to the terminal and appended to ``log_path``;
    ``kill -SIG<launcher.preempt_signal>`` and ``kill`` (SIGTERM) on this process reach it, and its
    output is read to its end."""
    env = dict(os.environ)
    if req.cfg.launcher.preempt_signal:  # the run catches it from its first line on
        env["NEMO_REASON_PREEMPT_SIGNAL"] = req.cfg.launcher.preempt_signal
    with open(log_path, "a") as log:
        proc = subprocess.Popen(argv, cwd=req.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        restore = _forward_to(proc, req.cfg.launcher.preempt_signal)
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                log.write(line)
                log.flush()
            return proc.wait()
        finally:
            restore()


def _forward_to(proc: subprocess.Popen, signal_name: str):
    previous = {signum: signal.signal(signum, lambda sig, frame: proc.send_signal(sig))
                for signum in forwarded_signals(signal_name)}
    return lambda: [signal.signal(signum, handler) for signum, handler in previous.items()]
