"""Stop cleanly on a preemption, a time-limit warning or SIGTERM: finish the step, checkpoint everywhere, exit 75.

Two kinds of signal stop a run this way:

- the warning signal, ``launcher.preempt_signal`` (USR1): SLURM sends it before the time limit
  (``#SBATCH --signal=B:USR1@300`` to the batch script, which forwards it to the ranks:
  launchers/slurm.sbatch.tmpl); ``kill -USR1`` on a local ``nemo-reason run`` is forwarded to its
  ranks (launch/local.py). The run was going to be cut short by the clock: requeue it;
- SIGTERM, always (whatever ``launcher.preempt_signal`` says): what ``scancel``, ``docker stop``,
  a Kubernetes eviction, SLURM's time limit without a warning and SLURM preemption
  (``PreemptMode=CANCEL|REQUEUE``) send before they SIGKILL. The grace between the two is the
  time the run has to finish its step and save: SLURM's ``KillWait`` (default 30 s), ``docker
  stop -t`` (the docker launcher renders ``--stop-timeout=launcher.preempt_warning_s``), the pod's
  ``terminationGracePeriodSeconds`` (default 30 s). A SIGTERM-stopped run is *not* requeued by the
  batch script: ``scancel`` is a user's decision to stop; a partition with
  ``PreemptMode=REQUEUE`` requeues the job by itself (a second requeue from the script would
  race it) and one with ``PreemptMode=CANCEL`` has decided against it. Either way the checkpoint
  is there: ``sbatch`` the same script (or re-run the same command) and it resumes.

Here:

1. :func:`install` sets a handler for both signals that only raises a flag: a handler must not do
   collective work, the signal may reach one rank in the middle of one. The CLI installs it before
   anything else when ``$NEMO_REASON_PREEMPT_SIGNAL`` is set (the batch script sets it), so that
   the signal cannot kill a rank that is still starting. A second SIGTERM does not kill either: a
   rank under ``srun`` or a spawning ``nemo-reason run`` may get one from the scheduler *and* one
   forwarded; the scheduler's SIGKILL bounds the wait;
2. :func:`agreed` is called by the training loop after every step, on every rank: a two-element
   SUM all-reduce (how many ranks got each kind of signal), so every rank stops after the same step
   even when the signal reached only some of them (or reached them during different steps);
3. the loop saves a checkpoint and stops; :func:`record` marks the run: rank 0 writes
   ``<run.dir>/preempted.json`` with the signals, how many ranks got them and ``"requeue"`` (false
   after a SIGTERM); the batch script requeues the job when the marker says so; the pipeline does
   not mark the step done, and :func:`exit_code` becomes :data:`EXIT_PREEMPTED`.

The requeued (or re-run) job runs the same command, which resumes from the newest complete
checkpoint. Left out: SIGINT (Ctrl-C) keeps its meaning, an interrupt (with ``kill -9``, the way
to stop at once); a signal that arrives while no training loop runs (start-up, a step that does not
train) is acted on after the next training step; nothing here requeues by itself: the batch
script does.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Dict, List, Optional

# EX_TEMPFAIL (sysexits.h): "temporary failure, try again" - the run stopped with a checkpoint.
EXIT_PREEMPTED = 75
MARKER = "preempted.json"

# Slots of the flag vector all-reduced by agreed(): the warning signal, SIGTERM.
WARNING, TERM = 0, 1

_slots: Dict[int, int] = {}  # signum -> slot, for the handlers installed
_names = ["", "TERM"]  # the signal name of each slot
_flags = [0, 0]  # this process received the signal of each slot
_counts = [0, 0]  # ranks that received each, as of the last agreed() that saw any
_stopped: Optional[dict] = None


def _on_signal(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    _flags[_slots.get(signum, TERM)] = 1


def install(signal_name: str) -> None:
    """Catch SIG<signal_name> (the warning signal; "" for none) and SIGTERM from now on. Idempotent;
    call it from the main thread, as early as possible (before the handler, the default action kills)."""
    wanted = {signal.SIGTERM: TERM}
    if signal_name and signal_name != "TERM":
        wanted[getattr(signal, "SIG" + signal_name)] = WARNING
        _names[WARNING] = signal_name
    elif signal_name == "TERM":  # SIGTERM is the warning: it requeues
        wanted[signal.SIGTERM] = WARNING
        _names[WARNING] = "TERM"
    for signum, slot in wanted.items():
        if _slots.get(signum) != slot or signal.getsignal(signum) is not _on_signal:
            signal.signal(signum, _on_signal)
            _slots[signum] = slot


def requested() -> bool:
    """This process received one of the signals."""
    return any(_flags)


def agreed() -> bool:
    """True on every rank once any rank received a signal. A collective: every rank calls it at the
    same point of every step (a no-op without a handler installed)."""
    if not _slots:
        return False
    import torch
    import torch.distributed as dist

    from nemo_reason.backend import dist as bdist

    flags = torch.tensor(_flags, dtype=torch.int32, device=bdist.device_for(bdist.read_env().local_rank))
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.SUM)
    counts = flags.tolist()
    if any(counts):
        _counts[:] = counts
    return any(counts)


def signals_seen() -> List[str]:
    """Names of the signals that reached some rank (as of the last :func:`agreed`, else this process)."""
    seen = _counts if any(_counts) else _flags
    return [_names[slot] for slot in (WARNING, TERM) if seen[slot]]


def requeue_wanted() -> bool:
    """Requeue after this stop: only the warning signal stopped it (see the module docstring)."""
    seen = _counts if any(_counts) else _flags
    return bool(seen[WARNING]) and not seen[TERM]


def record(run_dir: Path, step_name: str, iteration: int, checkpoint: Optional[Path]) -> None:
    """The run stopped after ``iteration`` with ``checkpoint`` saved: remember it for the exit code
    and (rank 0) write the marker the batch script reads."""
    global _stopped
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    seen = _counts if any(_counts) else _flags
    _stopped = {"step": step_name, "iteration": iteration, "checkpoint": str(checkpoint) if checkpoint else None,
                "time": time.time(), "signals": signals_seen(),
                "ranks_signalled": {_names[s]: seen[s] for s in (WARNING, TERM) if seen[s]},
                "world_size": world, "requeue": requeue_wanted()}
    if rank == 0:
        path = Path(run_dir) / MARKER
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(_stopped))
        tmp.replace(path)
        names = "+".join("SIG" + n for n in _stopped["signals"]) or "signal"
        reached = ", ".join(f"SIG{n} reached {c} of {world} rank(s)" for n, c in _stopped["ranks_signalled"].items())
        print(f"[nemo-reason] {names}: stopped after step {iteration} of '{step_name}' with checkpoint "
              f"{checkpoint}; the same command resumes ({reached}"
              + ("" if _stopped["requeue"] else "; a batch job does not requeue after SIGTERM")
              + ")", flush=True)


def exit_code() -> int:
    return EXIT_PREEMPTED if _stopped is not None else 0


def reset() -> None:
    """Forget the flags and the stop, and give the signals back their default action (tests)."""
    global _stopped
    for signum in _slots:
        signal.signal(signum, signal.SIG_DFL)
    _slots.clear()
    _names[:] = ["", "TERM"]
    _flags[:] = [0, 0]
    _counts[:] = [0, 0]
    _stopped = None
