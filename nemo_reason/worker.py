"""Per-rank entry point: ``python -m nemo_reason.worker <resolved config.yaml>``.

Started by ``nemo-reason run`` (torch elastic), torchrun or srun; reads the rank from the
environment, initialises torch.distributed and Megatron's parallel state, seeds, and runs the
pipeline.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from nemo_reason.config.schema import RunConfig


def quiet_libraries() -> None:
    """Megatron logs its full config and many one-time warnings at INFO/WARNING per rank."""
    logging.getLogger("megatron").setLevel(logging.ERROR)
    logging.getLogger("megatron.core.dist_checkpointing").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*Apex is not installed.*")
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\..*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def run_worker(cfg: RunConfig) -> int:
    """Run the pipeline as this rank; returns 0, or 75 when it stopped for the preemption signal
    with a checkpoint (training/preemption.py)."""
    from nemo_reason.training import preemption

    preemption.install(cfg.launcher.preempt_signal)  # first: the signal's default action kills
    quiet_libraries()
    # Megatron is imported only now, after its import-time warnings are filtered.
    from nemo_reason.backend import dist as bdist
    from nemo_reason.backend import prepare, select
    from nemo_reason.parallel import ParallelDims

    denv = bdist.init_process_group()
    try:
        prepare(select(cfg.model.backend))
        dims = ParallelDims.from_config(cfg.parallel, denv.world_size)
        dims.init()
        bdist.seed_everything(cfg.run.seed)
        from nemo_reason.stages.pipeline import run_pipeline

        run_pipeline(cfg, dims)
        if preemption.exit_code():
            # Every rank has closed its files before any exits: under `srun --kill-on-bad-exit` the
            # first exit code 75 stops the other tasks.
            import torch.distributed as dist

            dist.barrier()
    finally:
        ParallelDims.destroy()
        bdist.destroy_process_group()
    return preemption.exit_code()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m nemo_reason.worker CONFIG.yaml", file=sys.stderr)
        return 2
    from nemo_reason.config.store import load_yaml

    cfg = load_yaml(argv[0])
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return run_worker(cfg)


if __name__ == "__main__":
    sys.exit(main())
