"""One set of gloo processes runs many parallel layouts, one after another.

``tests.spawn.spawn(run_cases, N, args=(CASES.json,))`` (test_layouts.py), or by hand:
``python -m torch.distributed.run --nproc-per-node N tests/distributed/parity_worker.py CASES.json``

Each case is a recipe, overrides and a run dir; the worker composes it exactly as
``nemo-reason run`` does, builds Megatron's parallel state for that layout, runs the recipe's
pipeline (the real training loop: Megatron DDP, optimizer, pipeline schedules, checkpoints) and
tears the parallel state down before the next case. Process start-up (torch + Megatron import,
about 8 s a process on the CI machine) is paid once per world size instead of once per layout.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback


def run_cases(rank: int, cases_path: str) -> int:
    """As rank ``rank`` (of the environment's WORLD_SIZE), run every case of ``cases_path`` in turn."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from nemo_reason.worker import quiet_libraries

    quiet_libraries()
    from nemo_reason.backend import dist as bdist
    from nemo_reason.backend import prepare, select
    from nemo_reason.config.store import compose
    from nemo_reason.parallel import ParallelDims
    from nemo_reason.stages.pipeline import run_pipeline

    denv = bdist.init_process_group()
    cases = json.loads(open(cases_path).read())
    try:
        for case in cases:
            overrides = [*case["overrides"], f"launcher.nproc_per_node={denv.world_size}",
                         f"run.dir={case['run_dir']}"]
            t0 = time.time()
            try:
                cfg = compose(case["recipe"], overrides)
                prepare(select(cfg.model.backend))
                dims = ParallelDims.from_config(cfg.parallel, denv.world_size)
                dims.init()
                bdist.seed_everything(cfg.run.seed)
                run_pipeline(cfg, dims)
                if denv.rank == 0:
                    print(f"[parity] {os.path.basename(case['run_dir'])}: {time.time() - t0:.1f} s", flush=True)
            except Exception:  # noqa: BLE001 - recorded for the test that owns the case
                # A failure inside a collective leaves the other ranks waiting: stop them all.
                os.makedirs(case["run_dir"], exist_ok=True)
                with open(os.path.join(case["run_dir"], f"error_rank{denv.rank}.txt"), "w") as f:
                    f.write(traceback.format_exc())
                raise
            finally:
                ParallelDims.destroy()
                from megatron.core.transformer.moe.moe_utils import clear_aux_losses_tracker

                clear_aux_losses_tracker()
    finally:
        bdist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(run_cases(int(os.environ.get("RANK", "0")), sys.argv[1]))
