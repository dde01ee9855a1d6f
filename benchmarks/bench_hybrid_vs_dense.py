"""Training speed of `tiny_hybrid` (Mamba-2 + attention + MLP, portable mixer) vs `tiny` (dense GPT).

Both recipes train with the same trainer group (16 x 128 tokens per step) through the CLI, one CPU
process each; the runs alternate, `--repeats` times, and the script reports the median steady-state
tokens/s from metrics.jsonl (windows of 10 steps after the first, which holds start-up). It also
reports the parameters per run and Megatron-LM-style model TFLOP/s, since the two models differ in
size: the hybrid's extra cost per token is the portable (pure PyTorch) chunked scan and conv, which
the fused mamba-ssm kernels replace on a GPU. Appends a result block to docs/benchmarks.md with
--record.

    python benchmarks/bench_hybrid_vs_dense.py --steps 60 --repeats 3 [--record]
"""

from machine import describe
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WINDOW = 10


def run(recipe: str, steps: int, workdir: Path) -> dict:
    run_dir = workdir / f"{recipe}_{len(list(workdir.iterdir()))}"
    out = subprocess.run([sys.executable, "-m", "nemo_reason.cli", "run", recipe, f"trainer.max_steps={steps}",
                          f"trainer.log_every={WINDOW}", "trainer.eval_every=0", "trainer.save_every=0",
                          "trainer.progress=false", f"run.dir={run_dir}"], check=True, cwd=workdir,
                         capture_output=True, text=True)
    recs = [json.loads(line) for line in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    steady = recs[1:]  # the first window holds start-up
    params = re.search(r"params/rank ([\d,]+)", out.stdout)
    return {
        "tokens_per_s": statistics.fmean(r["tokens_per_s"] for r in steady),
        "tflops": statistics.fmean(r["model_tflops_per_s_per_rank"] for r in steady),
        "params": int(params.group(1).replace(",", "")) if params else None,
        "first_loss": recs[0]["loss"], "last_loss": recs[-1]["loss"],
    }


def machine() -> str:
    return describe(load=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    if args.steps < 2 * WINDOW:
        ap.error(f"--steps must be at least {2 * WINDOW} (one start-up window plus one measured)")
    results = {"tiny": [], "tiny_hybrid": []}
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.repeats):
            for recipe in results:
                results[recipe].append(run(recipe, args.steps, Path(d)))
            line = " | ".join(f"{r} {v[-1]['tokens_per_s']:.0f} tok/s" for r, v in results.items())
            print(f"repeat {i + 1}: {line}", flush=True)
    med = {r: statistics.median(x["tokens_per_s"] for x in v) for r, v in results.items()}
    tfl = {r: statistics.median(x["tflops"] for x in v) for r, v in results.items()}
    par = {r: v[0]["params"] for r, v in results.items()}
    ratio = med["tiny_hybrid"] / med["tiny"]
    lines = [
        f"- machine: {machine()}",
        f"- trainer `tiny` group: 16 x 128 tokens/step, fp32, 1 process, {args.steps} steps, median of {args.repeats}",
        f"- `tiny` (dense GPT, 4 layers, {par['tiny']:,} params): {med['tiny']:,.0f} tokens/s, "
        f"{tfl['tiny'] * 1e3:.2f} model GFLOP/s",
        f"- `tiny_hybrid` (M-M*-M-: 3 Mamba-2 + 1 attention + 3 MLP, portable mixer, {par['tiny_hybrid']:,} params): "
        f"{med['tiny_hybrid']:,.0f} tokens/s, {tfl['tiny_hybrid'] * 1e3:.2f} model GFLOP/s",
        f"- hybrid / dense tokens/s: {ratio:.2f}",
    ]
    print("\n".join(lines))
    if args.record:
        with open(REPO / "docs" / "benchmarks.md", "a") as f:
            import datetime

            f.write("\n## tiny_hybrid vs tiny training speed (benchmarks/bench_hybrid_vs_dense.py)\n\n"
                    f"Command: `python benchmarks/bench_hybrid_vs_dense.py --steps {args.steps} --repeats "
                    f"{args.repeats} --record` ({datetime.date.today()})\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
