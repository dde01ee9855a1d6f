"""Stop cleanly on a preemption or time-limit warning: finish the step, checkpoint everywhere, exit.

SLURM warns a job before it kills it: ``#SBATCH --signal=B:USR1@300`` sends SIGUSR1 to the batch
script five minutes before the time limit, and the script (launchers/slurm.sbatch) forwards it to
the ranks; ``--signal=USR1@300`` would send it to the ranks directly; ``kill -USR1`` on a local
``nemo-reason run`` is forwarded to its ranks. Here:

1. :func:`install` sets a handler for ``launcher.preempt_signal`` that only raises a flag: a
   handler must not do collective work, the signal may reach one rank in the middle of one.
   The CLI installs it before anything else when ``$NEMO_REASON_PREEMPT_SIGNAL`` is set (the
   batch script sets it), so that the signal cannot kill a rank that is still starting;
2. :func:`agreed` is called by the training loop after every step, on every rank: a one-element
   MAX all-reduce of the flags, so every rank stops after the same step even when the signal
   reached only some of them (or reached them during different steps);
3. the loop saves a checkpoint and stops; :func:`record` marks the run: rank 0 writes
   ``<run.dir>/preempted.json`` (the batch script requeues the job when it finds it; the
   pipeline does not mark the step done) and :func:`exit_code` becomes :data:`EXIT_PREEMPTED`.

The requeued job runs the same command, which resumes from the newest complete checkpoint.
Left out: SIGTERM (``scancel``, SLURM's final kill) keeps its default meaning, and nothing here
requeues by itself: the batch script does.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Optional

# EX_TEMPFAIL (sysexits.h): "temporary failure, try again" - the run stopped with a checkpoint.
EXIT_PREEMPTED = 75
MARKER = "preempted.json"

_signal: Optional[int] = None
_received = False
_stopped: Optional[dict] = None


def _on_signal(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    global _received
    _received = True


def install(signal_name: str) -> None:
    """Catch SIG<signal_name> from now on ("" leaves signals alone). Idempotent; call it from the
    main thread, as early as possible (before the handler, the signal's default action kills)."""
    global _signal
    if not signal_name:
        return
    signum = getattr(signal, "SIG" + signal_name)
    if _signal != signum:
        signal.signal(signum, _on_signal)
        _signal = signum


def requested() -> bool:
    """This process received the signal."""
    return _received


def agreed() -> bool:
    """True on every rank once any rank received the signal. A collective: every rank calls it
    at the same point of every step (a no-op without a handler installed)."""
    if _signal is None:
        return False
    import torch
    import torch.distributed as dist

    from nemo_reason.backend import dist as bdist

    flag = torch.tensor([1 if _received else 0], dtype=torch.int32,
                        device=bdist.device_for(bdist.read_env().local_rank))
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def record(run_dir: Path, step_name: str, iteration: int, checkpoint: Optional[Path]) -> None:
    """The run stopped after ``iteration`` with ``checkpoint`` saved: remember it for the exit code
    and (rank 0) tell the batch script to requeue."""
    global _stopped
    _stopped = {"step": step_name, "iteration": iteration, "checkpoint": str(checkpoint) if checkpoint else None,
                "time": time.time()}
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        path = Path(run_dir) / MARKER
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(_stopped))
        tmp.replace(path)
        print(f"[nemo-reason] SIG{signal.Signals(_signal).name[3:] if _signal else '?'}: stopped after step "
              f"{iteration} of '{step_name}' with checkpoint {checkpoint}; the same command resumes", flush=True)


def exit_code() -> int:
    return EXIT_PREEMPTED if _stopped is not None else 0


def reset() -> None:
    """Forget the flag and the stop, and give the signal back its default action (tests)."""
    global _signal, _received, _stopped
    if _signal is not None:
        signal.signal(_signal, signal.SIG_DFL)
    _signal, _received, _stopped = None, False, None
