"""A real single-node SLURM on this machine, for tests: munged, slurmctld and slurmd on localhost.

Everything lives in one folder the caller owns (shared/notes/slurm-on-one-machine.md): a munge
key, socket, pid and log; ``slurm.conf`` (given to the daemons with ``-f`` and to the clients
through ``SLURM_CONF``) with free ports, state, spool, pid and log files. No accounting store:
read a job's state with ``scontrol show job`` (kept for MinJobAge after it ends). The daemons
are stopped by the pids they wrote. Needs root (SlurmUser=root) and Debian's slurm-wlm + munge.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "sinfo", "scancel")


def missing_binaries() -> List[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSlurm:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self._pidfiles = {name: self.root / f"{name}.pid" for name in ("slurmd", "slurmctld", "munged")}

    # ---- set up -------------------------------------------------------------------------------
    def _start_munge(self) -> None:
        mdir = self.root / "munge"
        mdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = mdir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        subprocess.run([_which("munged"), "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
                        f"--pid-file={self._pidfiles['munged']}", f"--log-file={mdir / 'munged.log'}",
                        f"--seed-file={mdir / 'munged.seed'}"], check=True, capture_output=True, timeout=30)

    def _write_conf(self) -> None:
        for d in ("state", "spool"):
            (self.root / d).mkdir(exist_ok=True)
        mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
        r = self.root
        self.conf.write_text("\n".join([
            "ClusterName=nrtest",
            f"SlurmctldHost={self.host}",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # Requeued jobs wait cred_expire + 1 s before they may start again (default 120 s).
            f"AuthInfo=socket={self.munge_socket},cred_expire=10",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={self._pidfiles['slurmctld']}",
            f"SlurmdPidFile={self._pidfiles['slurmd']}",
            f"SlurmctldLogFile={r / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "ReturnToService=2",
            "MpiDefault=none",
            "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none",
            "MinJobAge=600",
            "KillWait=10",
            "SchedulerParameters=sched_interval=1",
            f"NodeName={self.host} CPUs={os.cpu_count()} RealMemory={int(mem_mb * 0.8)} State=UNKNOWN",
            f"PartitionName=test Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def start(self, timeout: float = 60) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._start_munge()
        self._write_conf()
        subprocess.run([_which("slurmctld"), "-f", str(self.conf)], check=True, capture_output=True, timeout=30)
        subprocess.run([_which("slurmd"), "-f", str(self.conf)], check=True, capture_output=True, timeout=30)
        deadline = time.time() + timeout
        state = ""
        while time.time() < deadline:
            out = self.run(["sinfo", "-h", "-o", "%T"], check=False)
            state = out.stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"SLURM node not idle after {timeout}s (sinfo: {state!r}):\n{self.logs()}")

    def stop(self) -> None:
        """Stop the daemons by their pids (slurmd, slurmctld, munged), waiting for each to go."""
        for name in ("slurmd", "slurmctld", "munged"):
            pidfile = self._pidfiles[name]
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)

    # ---- use ------------------------------------------------------------------------------------
    def env(self) -> Dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, argv: List[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        env = dict(os.environ, **self.env())
        return subprocess.run(argv, env=env, capture_output=True, text=True, check=check, timeout=timeout)

    def job(self, job_id: str) -> Dict[str, str]:
        """``scontrol show job`` as a dict (JobState, ExitCode, Restarts, ...); {} once forgotten."""
        out = self.run(["scontrol", "show", "job", "-o", job_id], check=False).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait_done(self, job_id: str, timeout: float) -> Dict[str, str]:
        """Wait until the job has ended (not pending, running, requeued or completing)."""
        deadline = time.time() + timeout
        info: Dict[str, str] = {}
        while time.time() < deadline:
            info = self.job(job_id)
            if info.get("JobState") not in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING",
                                            "REQUEUE_HOLD", "REQUEUE_FED", None):
                return info
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} still {info.get('JobState')} after {timeout}s:\n{self.logs()}")

    def logs(self, tail: int = 40) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munge/munged.log"):
            p = self.root / name
            if p.is_file():
                lines = p.read_text(errors="replace").splitlines()[-tail:]
                parts.append(f"--- {name} ---\n" + "\n".join(lines))
        return "\n".join(parts)

    def cancel(self, job_id: str) -> Optional[subprocess.CompletedProcess]:
        return self.run(["scancel", job_id], check=False)
