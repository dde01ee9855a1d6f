"""A single-process Megatron environment for unit tests: gloo world of 1, parallel_state at size 1."""

import os

import pytest


@pytest.fixture(scope="module")
def megatron_single():
    import torch.distributed as dist

    from nemo_reason.backend import dist as bdist
    from nemo_reason.backend import prepare
    from nemo_reason.launch.ports import free_port
    from nemo_reason.parallel import ParallelDims

    saved = {k: os.environ.pop(k, None) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    os.environ["MASTER_PORT"] = str(free_port())
    bdist.init_process_group()
    prepare("local")
    dims = ParallelDims(1, 1, 1, 1, None, None, 1)
    dims.init()
    bdist.seed_everything(1234)
    yield dims
    ParallelDims.destroy()
    dist.destroy_process_group()
    # Leave the environment as found: CLI runs started later by other tests inherit it.
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def in_layout(fn, tp: int, *args):
    """In a rank started by ``tests.spawn.spawn``: the gloo group, Megatron's parallel state at
    tensor-parallel size ``tp`` over the whole world, seed 1234; ``fn(*args)``; then tear down."""
    import torch

    from nemo_reason.backend import dist as bdist
    from nemo_reason.backend import prepare
    from nemo_reason.parallel import ParallelDims

    torch.set_num_threads(1)
    env = bdist.init_process_group()
    prepare("local")
    ParallelDims(tp, 1, 1, 1, None, None, env.world_size).init()
    bdist.seed_everything(1234)
    try:
        return fn(*args)
    finally:
        ParallelDims.destroy()
        bdist.destroy_process_group()
