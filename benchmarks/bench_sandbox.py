"""Code-sandbox throughput: calls/s of the ``code`` verifier on 1 and 2 workers, per isolation mode.

One call scores a 5-line function against 4 ``assert`` lines (nemo_reason.rewards.code.run_tests: one
sandboxed interpreter per call). Workers are threads, each calling ``run_tests`` in a loop (the work
is in the child processes, so threads suffice). For reference, ``plain`` is the same interpreter
started with ``subprocess.run`` and no isolation at all, running the same harness. Appends a result
block to docs/benchmarks.md with --record.

    python benchmarks/bench_sandbox.py --calls 100 [--modes bwrap,unshare,rlimits] [--record]
"""

import argparse
import datetime
import marshal
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from machine import describe

from nemo_reason.rewards.code import HARNESS, plan_tests, run_tests
from nemo_reason.rewards.sandbox import base_python

REPO = Path(__file__).resolve().parents[1]
SOLUTION = ("def running_max(xs):\n    out, best = [], None\n    for x in xs:\n"
            "        best = x if best is None or x > best else best\n        out.append(best)\n    return out\n")
TESTS = ["assert running_max([-18, -4, 12, 11, 5, 38]) == [-18, -4, 12, 12, 12, 38]",
         "assert running_max([10, 2, 17, 37]) == [10, 10, 17, 37]",
         "assert running_max([12, -12, -2]) == [12, 12, 12]", "assert running_max([]) == []"]


def one_call(mode: str) -> None:
    if mode == "plain":
        payload = marshal.dumps(("0" * 32, SOLUTION, [(k, e) for k, e, _ in plan_tests(TESTS)]))
        subprocess.run([base_python(), "-I", "-S", "-c", HARNESS], input=payload, capture_output=True, check=True)
        return
    passed, result = run_tests(SOLUTION, TESTS, isolation=mode)
    if not passed:
        raise RuntimeError(f"the reference solution failed under {mode}: {result}")


def calls_per_s(mode: str, workers: int, calls: int) -> float:
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda _: one_call(mode), range(2 * workers)))  # warm caches
        t0 = time.perf_counter()
        list(pool.map(lambda _: one_call(mode), range(calls)))
        return calls / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", default="plain,bwrap,unshare,rlimits")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",")
             if m in ("plain", "rlimits") or (shutil.which(m) and (m == "bwrap" or os.geteuid() == 0))]
    rows = []
    for mode in modes:
        for workers in (1, 2):
            runs = [calls_per_s(mode, workers, args.calls) for _ in range(args.repeats)]
            med = statistics.median(runs)
            rows.append((mode, workers, med, max(runs)))
            print(f"{mode:8s} workers={workers}: {med:6.1f} calls/s median ({max(runs):.1f} best), "
                  f"{1000 / med:5.1f} ms per call", flush=True)
    if args.record:
        lines = [
            "", "## Code-sandbox throughput (benchmarks/bench_sandbox.py)", "",
            f"Command: `python benchmarks/bench_sandbox.py --calls {args.calls} --repeats {args.repeats}` "
            f"({datetime.date.today().isoformat()})", "",
            f"- machine: {describe(load=True)}, {subprocess.run(['bwrap', '--version'], capture_output=True, text=True).stdout.strip() if shutil.which('bwrap') else 'no bwrap'}",
            f"- one call: the `code` verifier's harness running a 5-line function and 4 asserts in a fresh "
            f"sandboxed interpreter (`{Path(base_python()).name} -I -S`); workers are threads; median (best) of "
            f"{args.repeats} runs of {args.calls} calls; `plain` = the same harness with no isolation", "",
            "| isolation | workers | calls/s median (best) | ms per call |", "|---|---:|---:|---:|",
        ]
        lines += [f"| {m} | {w} | {med:.1f} ({best:.1f}) | {1000 / med:.1f} |" for m, w, med, best in rows]
        with open(REPO / "docs" / "benchmarks.md", "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
