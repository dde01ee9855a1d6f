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

EXIT_CONFIG = 2  # as the CLI's: a configuration (here: preflight) error


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
    """Run the pipeline as this rank; returns 0, 75 when it stopped for the preemption signal
    with a checkpoint (training/preemption.py), or 2 when the preflight refuses this machine."""
    from nemo_reason.training import preemption

    preemption.install(cfg.launcher.preempt_signal)  # first: the signal's default action kills
    from nemo_reason.config.errors import ConfigError
    from nemo_reason.preflight import preflight

    try:
        preflight(cfg)  # this rank's machine, before any model or data is built
    except ConfigError as err:
        return _refuse(err)
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


def _refuse(err) -> int:
    """Exit code 2 for a preflight failure, with one message for the job: rank 0 prints it, the other
    ranks (same config, same kind of machine) stay quiet and leave a moment later, so that the
    launcher, which stops every rank once one exits, does not stop rank 0 before it has printed."""
    import time

    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    if rank == 0:
        print(f"nemo-reason: error: {err}", file=sys.stderr, flush=True)
    else:
        time.sleep(2.0)
    return EXIT_CONFIG


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m nemo_reason.worker CONFIG.yaml", file=sys.stderr)
        return 2
    from nemo_reason.config.store import load_yaml

    cfg = load_yaml(argv[0])
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from nemo_reason.config.errors import ConfigError

    try:
        return run_worker(cfg)
    except ConfigError as err:  # found while building (e.g. a data split too small): one message, exit 2
        return _refuse(err)


if __name__ == "__main__":
    sys.exit(main())
