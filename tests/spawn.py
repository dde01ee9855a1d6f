"""The one way tests start real rank processes: ``spawn`` for a function, ``torchrun`` for a command.

``spawn(fn, world, args)`` starts ``world`` fresh Python processes (``python -m tests.spawn``), each
with the environment torchrun would give it (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
MASTER_ADDR, MASTER_PORT on a free port, OMP_NUM_THREADS=1) and calls ``fn(rank, *args)`` there;
``fn`` is a module-level function (or ``"package.module:function"``) that initialises its own
process group, e.g. with ``nemo_reason.backend.dist.init_process_group()``. What it returns comes
back per rank (pickled through a file), with its exit code and its output (stdout and stderr, one
log file per rank). When a rank fails, the others are stopped after a short grace period (they
would wait in a collective until the gloo timeout) and ``SpawnError`` names every failed rank with
the tail of its output.

``torchrun(argv, world)`` runs ``python -m torch.distributed.run ... ARGV`` on one node with a free
rendezvous port: only for tests about the torchrun start path itself; it costs an extra agent
process (torch import, rendezvous) that ``spawn`` does not.

Left out: several nodes, restarts (elastic), GPUs. The parent imports nothing heavy (no torch), so
using this from a test module costs nothing at collection. CLI runs (``nemo-reason run ...
launcher.nproc_per_node=2``, the launcher under test) go through ``tests.conftest.run_cli`` (or
``start_cli`` for a run the test signals or kills).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from nemo_reason.launch.ports import free_port

REPO = Path(__file__).resolve().parents[1]
GRACE_S = 10.0  # after one rank fails, how long the others get to fail or finish on their own
TAIL = 4000  # characters of each failed rank's output in the error


class SpawnError(AssertionError):
    """One or more ranks failed or timed out; ``results`` holds every rank's outcome."""

    def __init__(self, message: str, results: List["RankResult"]):
        super().__init__(message)
        self.results = results


@dataclasses.dataclass
class RankResult:
    rank: int
    returncode: int  # negative: killed by that signal (-9 when stopped by the helper)
    output: str  # stdout and stderr together
    value: Any = None  # what fn returned (None when it failed)


def _target_name(fn: Union[str, Callable]) -> str:
    if isinstance(fn, str):
        if ":" not in fn:
            raise ValueError(f"spawn target {fn!r}: write it as 'package.module:function'")
        return fn
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        raise ValueError(f"spawn target {fn!r} is not importable by name: use a module-level function "
                         f"of an importable module, or pass 'package.module:function'")
    return f"{module}:{qualname}"


def _env(extra: Optional[Dict[str, str]]) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")  # a rank per core at most on the CI machine
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def spawn(fn: Union[str, Callable], world: int, args: Sequence[Any] = (), env: Optional[Dict[str, str]] = None,
          timeout: float = 300, cwd: Optional[Path] = None, workdir: Optional[Path] = None,
          check: bool = True) -> List[RankResult]:
    """Call ``fn(rank, *args)`` in ``world`` new processes, one per rank; returns their results in
    rank order. ``args`` must pickle. ``workdir`` keeps the per-rank logs (``rank{r}.log``;
    default: a temporary folder, removed on success). With ``check`` (the default) a failed or
    timed-out rank raises ``SpawnError``; without, the results are returned as they are."""
    target = _target_name(fn)
    keep = workdir is not None
    work = Path(workdir) if keep else Path(tempfile.mkdtemp(prefix="spawn_"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "call.pkl").write_bytes(pickle.dumps((target, tuple(args))))
    base = _env(env)
    base.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(world),
                LOCAL_WORLD_SIZE=str(world))
    procs, logs = [], []
    for rank in range(world):
        log = open(work / f"rank{rank}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.spawn", str(work), str(rank)],
                                      cwd=cwd, env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                      stdout=log, stderr=subprocess.STDOUT))
    try:
        timed_out, order = _wait(procs, time.monotonic() + timeout)
    finally:  # also on Ctrl-C in pytest: no rank outlives the test
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    results = []
    for rank, proc in enumerate(procs):
        out = (work / f"rank{rank}.log").read_text(errors="replace")
        ret = work / f"rank{rank}.pkl"
        value = pickle.loads(ret.read_bytes()) if proc.returncode == 0 and ret.exists() else None
        results.append(RankResult(rank, proc.returncode, out, value))
    # In the order they exited: the first failure is the cause, the later ones often its echo
    # (a peer's connection closed in a collective).
    failed = sorted((r for r in results if r.returncode != 0), key=lambda r: order.index(r.rank))
    if check and (failed or timed_out):
        why = f"timed out after {timeout:.0f} s" if timed_out else f"{len(failed)} of {world} ranks failed"
        parts = [f"spawn {target} on {world} ranks: {why} (logs in {work})"]
        for r in failed:
            stopped = " (stopped by the helper)" if r.returncode == -9 else ""
            parts.append(f"--- rank {r.rank} exit code {r.returncode}{stopped}, last output:\n{r.output[-TAIL:]}")
        raise SpawnError("\n".join(parts), results)
    if not keep and not failed:
        shutil.rmtree(work, ignore_errors=True)
    return results


def _wait(procs: List[subprocess.Popen], deadline: float):
    """Wait for every process; once one fails, the rest get GRACE_S, then are killed. Returns
    (whether the deadline passed, the ranks in the order they exited)."""
    first_failure, order = None, []
    while True:
        codes = [p.poll() for p in procs]
        order += [r for r, c in enumerate(codes) if c is not None and r not in order]
        if all(c is not None for c in codes):
            return False, order
        now = time.monotonic()
        if first_failure is None and any(c not in (None, 0) for c in codes):
            first_failure = now
        if now > deadline or (first_failure is not None and now - first_failure > GRACE_S):
            for p in procs:
                if p.poll() is None:
                    p.kill()
            for p in procs:
                p.wait()
            return now > deadline, order + [r for r in range(len(procs)) if r not in order]
        time.sleep(0.05)


def torchrun(argv: Sequence[str], world: int, cwd: Optional[Path] = None, env: Optional[Dict[str, str]] = None,
             timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc-per-node WORLD ARGV`` on this node (c10d rendezvous
    on a free port); returns the CompletedProcess with every rank's output in ``.stdout``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={world}",
           f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--rdzv-backend=c10d", *argv]
    proc = subprocess.run(cmd, cwd=cwd, env=_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise SpawnError(f"torchrun {' '.join(argv)} on {world} ranks exited {proc.returncode}:\n"
                         f"{proc.stdout[-TAIL:]}", [])
    return proc


def _rank_main(work: str, rank: str) -> int:
    """In the rank process: import the target, call it, write its return value."""
    target, args = pickle.loads(Path(work, "call.pkl").read_bytes())
    module, _, qualname = target.partition(":")
    try:
        fn = importlib.import_module(module)
        for part in qualname.split("."):
            fn = getattr(fn, part)
        value = fn(int(rank), *args)
    except SystemExit as exc:  # sys.exit(75) in fn: that exit code, as the rank's own
        sys.stderr.flush()
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - the parent reports it with this rank's output
        traceback.print_exc()
        sys.stderr.flush()
        return 1
    tmp = Path(work, f".rank{rank}.pkl")
    tmp.write_bytes(pickle.dumps(value))
    tmp.rename(Path(work, f"rank{rank}.pkl"))
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    sys.exit(_rank_main(*sys.argv[1:]))
