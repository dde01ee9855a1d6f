"""Ranks agree on the preemption signal: it reaches one rank only, yet every rank stops after the
same step (a MAX all-reduce of the flag per step, over gloo)."""

import json
import os
import signal

import torch.distributed as dist
import torch.multiprocessing as mp

from nemo_reason.launch.ports import free_port


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    from nemo_reason.backend import dist as bdist
    from nemo_reason.training import preemption

    bdist.init_process_group(timeout_minutes=2)
    preemption.install("USR1")
    stopped_at = None
    for step in range(1, 9):
        if rank == 1 and step == 3:
            os.kill(os.getpid(), signal.SIGUSR1)  # only rank 1 is signalled, during step 3
        if preemption.agreed():
            stopped_at = step
            break
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"stopped_at": stopped_at, "received": preemption.requested()}, f)
    dist.destroy_process_group()


def test_ranks_stop_after_the_same_step(tmp_path):
    mp.start_processes(_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [g["stopped_at"] for g in got] == [3, 3]
    assert [g["received"] for g in got] == [False, True]
