"""Spawn ``launcher.nproc_per_node`` ranks on this machine with torch's elastic launcher.

This is what ``torchrun --standalone --nproc-per-node N -m nemo_reason.worker CONFIG`` does,
from Python: a c10d rendezvous on localhost, one worker process per rank with RANK/WORLD_SIZE/
LOCAL_RANK/MASTER_ADDR/MASTER_PORT set, and the first failure reported with its rank.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

from nemo_reason.launch.ports import free_port


def launched_by_torchrun_or_srun() -> bool:
    """True inside a rank already started by torchrun/elastic or by ``srun`` with several tasks."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return True
    return "SLURM_STEP_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1


def threads_per_rank(nproc: int) -> int:
    return max(1, (os.cpu_count() or 1) // nproc)


def spawn(config_path: Path, nproc: int, master_port: int = 0) -> int:
    """Run the worker on ``nproc`` local ranks; returns 0 on success, 1 if any rank failed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    port = master_port or free_port()
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_rank(nproc)))
    lc = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"nemo-reason-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{port}",
        rdzv_configs={"is_host": True},
        max_restarts=0,
        monitor_interval=0.2,
        start_method="spawn",
    )
    try:
        elastic_launch(lc, entrypoint=sys.executable)("-m", "nemo_reason.worker", str(config_path))
    except ChildFailedError as exc:
        first = next(iter(exc.failures.values()), None)
        print(f"[nemo-reason] rank {getattr(first, 'local_rank', '?')} failed "
              f"(exit code {getattr(first, 'exitcode', '?')}); see its output above", file=sys.stderr)
        return 1
    return 0
