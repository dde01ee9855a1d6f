"""One process as Megatron sees it, for the benchmarks: a gloo world of 1, parallel state at size 1."""

from __future__ import annotations

import os


def single_process():
    """Start the process group and Megatron's parallel state for one rank; returns the ParallelDims."""
    from nemo_reason.backend import dist as bdist
    from nemo_reason.backend import prepare
    from nemo_reason.launch.ports import free_port
    from nemo_reason.parallel import ParallelDims

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(k, None)
    os.environ["MASTER_PORT"] = str(free_port())
    bdist.init_process_group()
    prepare("local")
    dims = ParallelDims(1, 1, 1, 1, None, None, 1)
    dims.init()
    return dims
