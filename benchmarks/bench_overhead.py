"""nemo_reason's training loop vs a bare Megatron-Core loop, tiny recipe, one CPU process.

Runs each side `--repeats` times, alternating, and reports the median steady-state tokens/s
(nemo-reason: from metrics.jsonl windows after the first; bare: after warmup steps). Target: the
nemo-reason loop within 5% of the bare loop. Appends a result block to docs/benchmarks.md with
--record.

    python benchmarks/bench_overhead.py --steps 80 --repeats 3 [--record]
"""

from machine import describe
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def nemo_reason_tokens_per_s(steps: int, workdir: Path) -> float:
    run_dir = workdir / f"run{len(list(workdir.iterdir()))}"
    subprocess.run([sys.executable, "-m", "nemo_reason.cli", "run", "tiny", f"trainer.max_steps={steps}",
                    "trainer.log_every=10", "trainer.eval_every=0", "trainer.save_every=0",
                    "trainer.progress=false", f"run.dir={run_dir}"], check=True, cwd=workdir,
                   stdout=subprocess.DEVNULL)
    recs = [json.loads(l) for l in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    steady = recs[1:]  # the first window holds start-up
    return sum(r["tokens_per_s"] * 10 for r in steady) / (10 * len(steady))


def bare_tokens_per_s(steps: int, attention: str) -> float:
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bare_megatron_loop.py"), "--steps", str(steps),
                          "--warmup", "10", "--attention", attention], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["tokens_per_s"]


def machine() -> str:
    return describe()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    ours, bare, bare_dpa = [], [], []
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.repeats):
            bare.append(bare_tokens_per_s(args.steps - 10, "sdpa"))
            ours.append(nemo_reason_tokens_per_s(args.steps, Path(d)))
            bare_dpa.append(bare_tokens_per_s(args.steps - 10, "megatron"))
            print(f"repeat {i + 1}: nemo-reason {ours[-1]:.0f} tok/s | bare (SDPA) {bare[-1]:.0f} | "
                  f"bare (Megatron DotProductAttention) {bare_dpa[-1]:.0f}", flush=True)
    o, b, bd = statistics.median(ours), statistics.median(bare), statistics.median(bare_dpa)
    ratio = o / b
    lines = [
        f"- machine: {machine()}",
        f"- tiny recipe (0.8M params, 16 x 128 tokens/step), fp32, 1 process, median of {args.repeats}",
        f"- nemo-reason loop: {o:,.0f} tokens/s; bare Megatron-Core loop, same model: {b:,.0f} tokens/s "
        f"-> ratio {ratio:.3f} ({(1 - ratio) * 100:+.1f}% overhead)",
        f"- bare loop with Megatron's own DotProductAttention (via cpu_compat): {bd:,.0f} tokens/s",
    ]
    print("\n".join(lines))
    if args.record:
        doc = REPO / "docs" / "benchmarks.md"
        with open(doc, "a") as f:
            f.write("\n### Training-loop overhead (benchmarks/bench_overhead.py)\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
