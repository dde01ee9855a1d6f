"""Score many completions with one verifier, in parallel worker processes, never stopping on a bad one.

:func:`score_batch` checks every sample for the fields the verifier declares (``fn.fields``) before
scoring anything, and raises :class:`~nemo_reason.rewards.MissingFieldError` naming ``samples[i]``
and the field. Then it scores in ``workers`` processes, each taking one sample at a time over a
pipe; a process, not a thread, because math-verify's timer needs a process's main thread and a
verifier stuck in C code (big-integer arithmetic) can only be stopped by killing its process. A
sample whose verifier raises, returns something that is not a number in [0, 1], kills its worker,
or runs past ``timeout_s`` scores 0 and is counted in :class:`BatchScores` (with the first error);
a killed or dead worker is replaced and the batch goes on. ``workers=0`` scores in this process
(same results, no kill at the time limit): for debugging and for tiny batches.

Workers start with ``fork`` where the platform has it, so any callable works (a closure too) and a
start costs milliseconds; elsewhere with ``spawn``, where the verifier must be importable. Left out:
a pool kept across calls (a GRPO step makes one call per step, and a fork is cheap) and scoring
one batch with several rewards (call once per domain).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Callable, Dict, List, Optional, Sequence, Union

from nemo_reason.config.errors import ConfigError
from nemo_reason.rewards import as_score, check_fields, get_reward, reward_label

Reward = Union[str, Callable[[dict, str], float]]


@dataclass
class BatchScores:
    """Scores in sample order; ``failures`` counts samples scored 0 because their verifier failed
    (raised, bad return value, died, or ``timeouts``: ran past the limit); ``errors`` maps their
    positions to what happened, ``first_error`` is the lowest position's, for a log line."""

    scores: List[float]
    failures: int = 0
    timeouts: int = 0
    failed: List[int] = field(default_factory=list)
    errors: Dict[int, str] = field(default_factory=dict)
    first_error: Optional[str] = None
    seconds: float = 0.0

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores) if self.scores else 0.0

    def _fail(self, i: int, msg: str, timeout: bool = False) -> None:
        self.scores[i] = 0.0
        self.failures += 1
        self.timeouts += int(timeout)
        self.failed.append(i)
        self.errors[i] = msg


def _score_one(fn, sample, completion):
    """(score, None) or (0.0, error message)."""
    try:
        return as_score(fn(sample, completion)), None
    except Exception as exc:  # a verifier's bug costs this sample only
        return 0.0, f"{type(exc).__name__}: {exc}"


def _worker(conn, fn) -> None:
    # Ctrl-C is the parent's to handle: it kills the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        i, sample, completion = msg
        try:
            score, err = _score_one(fn, sample, completion)
        except BaseException as exc:  # SystemExit from a user's verifier
            score, err = 0.0, f"{type(exc).__name__}: {exc}"
        conn.send((i, score, err))


class _Slot:
    def __init__(self, ctx, fn):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, fn), daemon=True)
        self.proc.start()
        child.close()
        self.task: Optional[int] = None
        self.deadline = 0.0

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


def _context(start_method: Optional[str]):
    if start_method is None:
        # fork is fast and takes any callable, but a fork of a process that already runs other threads
        # (torch's pools, gloo, a trainer) can deadlock in the child: then start from a forkserver.
        methods = mp.get_all_start_methods()
        threaded = len(os.listdir("/proc/self/task")) > 1 if os.path.isdir("/proc/self/task") else True
        if "fork" in methods and not threaded:
            start_method = "fork"
        else:
            start_method = "forkserver" if "forkserver" in methods else "spawn"
    return mp.get_context(start_method)


def score_batch(reward: Reward, samples: Sequence[dict], completions: Sequence[str], workers: int = 2,
                timeout_s: float = 10.0, start_method: Optional[str] = None) -> BatchScores:
    """Score ``completions[i]`` against ``samples[i]`` with ``reward`` (a registered name, a
    ``module:function`` path or a callable) in ``workers`` processes, each sample bounded by
    ``timeout_s`` seconds. Raises ConfigError for an unknown reward, mismatched lengths or a sample
    missing a field the verifier needs; never for a verifier failing on a sample."""
    fn = get_reward(reward)
    label = reward_label(reward)
    if len(samples) != len(completions):
        raise ConfigError(f"score_batch: {len(samples)} samples but {len(completions)} completions; "
                          f"pass one completion per sample (repeat a sample for n completions of it)")
    check_fields(fn, samples, label)
    if timeout_s <= 0:
        raise ConfigError(f"score_batch: timeout_s must be > 0, got {timeout_s}")
    n = len(samples)
    out = BatchScores(scores=[0.0] * n)
    t0 = time.perf_counter()
    if workers <= 0 or n == 0:
        for i in range(n):
            out.scores[i], err = _score_one(fn, samples[i], completions[i])
            if err is not None:
                out._fail(i, err)
    else:
        _score_parallel(fn, samples, completions, min(workers, n), timeout_s, _context(start_method), out)
    out.failed.sort()
    if out.failed:
        out.first_error = f"samples[{out.failed[0]}]: {out.errors[out.failed[0]]}"
    out.seconds = time.perf_counter() - t0
    return out


def _score_parallel(fn, samples, completions, workers, timeout_s, ctx, out: BatchScores) -> None:
    pending = deque(range(len(samples)))
    slots = [_Slot(ctx, fn) for _ in range(workers)]
    try:
        while True:
            for k, slot in enumerate(slots):
                if slot.task is None and pending:
                    i = pending.popleft()
                    try:
                        slot.conn.send((i, samples[i], completions[i]))
                    except (BrokenPipeError, OSError) as exc:
                        out._fail(i, f"worker could not take the sample ({exc})")
                        slot.kill()
                        slots[k] = _Slot(ctx, fn)
                        continue
                    slot.task, slot.deadline = i, time.monotonic() + timeout_s
            busy = [s for s in slots if s.task is not None]
            if not busy:
                break
            left = max(0.0, min(s.deadline for s in busy) - time.monotonic())
            ready = set(wait([s.conn for s in busy], timeout=left))
            now = time.monotonic()
            for k, slot in enumerate(slots):
                if slot.task is None:
                    continue
                if slot.conn in ready:
                    try:
                        i, score, err = slot.conn.recv()
                    except (EOFError, OSError):
                        slot.proc.join(timeout=5)
                        out._fail(slot.task, f"the verifier's process died (exit code {slot.proc.exitcode})")
                        slot.kill()
                        slots[k] = _Slot(ctx, fn)
                        continue
                    out.scores[i] = score
                    if err is not None:
                        out._fail(i, err)
                    slot.task = None
                elif now >= slot.deadline:
                    out._fail(slot.task, f"no score within timeout_s={timeout_s:g} s; the worker was killed",
                              timeout=True)
                    slot.kill()
                    slots[k] = _Slot(ctx, fn)
    finally:
        for slot in slots:
            try:
                slot.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 2.0
        for slot in slots:
            slot.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            slot.kill()
