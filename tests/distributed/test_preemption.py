"""Ranks agree on the preemption signal: it reaches one rank only, yet every rank stops after the
same step (a MAX all-reduce of the flag per step, over gloo)."""

import os
import signal

from tests.spawn import spawn


def _rank(rank: int) -> dict:
    import torch.distributed as dist

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
    dist.destroy_process_group()
    return {"stopped_at": stopped_at, "received": preemption.requested()}


def test_ranks_stop_after_the_same_step():
    got = [r.value for r in spawn(_rank, 2, timeout=180)]
    assert [g["stopped_at"] for g in got] == [3, 3]
    assert [g["received"] for g in got] == [False, True]
