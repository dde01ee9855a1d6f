"""Chunked SSD scan (nemo_reason.ops) vs the per-timestep recurrence, forward + backward, on the CPU.

One small Mamba-2 mixer's worth of heads, called the way Megatron's MambaMixer calls the scan (D per head,
dt_bias, dt_softplus, z=None because the gated RMSNorm follows): batch 1, nheads 8, headdim 64, dstate 64,
ngroups 1, float32; chunk_size 128 (Megatron's default) and 64 (the CPU's best: the intra-chunk matmuls
shrink with the chunk while the state matmuls stay). Times y = scan(...); y.backward(g) with gradients for
x, dt, A, B, C, D, dt_bias. The chunked scan: best and median of --repeats runs after one warm-up; the naive
loop: best of --naive-repeats runs, up to --naive-max tokens (it takes about a second per thousand tokens);
the runs are interleaved, so that chunked and naive see the same load from other processes.
Best-of-N is the figure to read on a shared machine; medians show the noise.
Targets: chunked >= 25x faster than naive at 1024 tokens, and chunked time per token flat in the length.

    python benchmarks/bench_ssd_scan.py [--lengths 256 512 1024 2048 4096] [--threads 1] [--record]

--threads 1 is what we record: on a shared 2-core machine two torch threads wait on each other and both
the chunked and the naive timings get several times slower and erratic. --record appends to docs/benchmarks.md.
"""

from machine import describe
import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from nemo_reason.ops import mamba_chunk_scan_combined, ssd_naive

REPO = Path(__file__).resolve().parents[1]
HEADS = dict(batch=1, nheads=8, headdim=64, dstate=64, ngroups=1)


def make_inputs(seqlen, batch, nheads, headdim, dstate, ngroups, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    leaves = dict(x=r(batch, seqlen, nheads, headdim), dt=r(batch, seqlen, nheads),
                  A=-torch.rand(nheads, generator=g) * 8, B=r(batch, seqlen, ngroups, dstate),
                  C=r(batch, seqlen, ngroups, dstate), D=r(nheads), dt_bias=r(nheads) - 3)
    for t in leaves.values():
        t.requires_grad_()
    return leaves, r(batch, seqlen, nheads, headdim)


def measure(seqlen, scans, repeats):
    """Best and median seconds of forward + backward for each scan; `repeats[name]` runs after one warm-up of
    each, interleaved round by round so that every scan sees the same load on a shared machine."""
    leaves, grad_out = make_inputs(seqlen, **HEADS)
    times = {name: [] for name in scans}
    for round_ in range(1 + max(repeats.values())):
        for name, scan in scans.items():
            if round_ > repeats[name] or (round_ == 0 and name == "naive"):  # the naive loop needs no warm-up
                continue
            for t in leaves.values():
                t.grad = None
            start = time.perf_counter()
            scan(**leaves, dt_softplus=True).backward(grad_out)
            if round_ > 0:
                times[name].append(time.perf_counter() - start)
    return {name: (min(ts), statistics.median(ts)) for name, ts in times.items()}


def machine() -> str:
    return describe(threads=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    ap.add_argument("--chunk-sizes", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--naive-max", type=int, default=4096, help="longest sequence the naive loop runs")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--naive-repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--record", action="store_true", help="append the result to docs/benchmarks.md")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cols = ["tokens"]
    for q in args.chunk_sizes:
        cols += [f"chunk {q}: best / median (ms)", f"chunk {q}: best us/token"]
    cols += ["naive best (ms)"] + [f"speedup chunk {q}" for q in args.chunk_sizes]
    header, rule = "| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols)
    print(header + "\n" + rule, flush=True)
    rows = []
    for seqlen in args.lengths:
        scans = {q: (lambda q=q, **kw: mamba_chunk_scan_combined(chunk_size=q, **kw)) for q in args.chunk_sizes}
        repeats = {q: args.repeats for q in args.chunk_sizes}
        if seqlen <= args.naive_max:
            scans["naive"], repeats["naive"] = ssd_naive, args.naive_repeats
        result = measure(seqlen, scans, repeats)
        cells = [str(seqlen)]
        for q in args.chunk_sizes:
            best, med = result[q]
            cells += [f"{best * 1e3:,.1f} / {med * 1e3:,.1f}", f"{best / seqlen * 1e6:,.1f}"]
        if "naive" in result:
            naive = result["naive"][0]
            cells += [f"{naive * 1e3:,.0f}"] + [f"{naive / result[q][0]:,.1f}x" for q in args.chunk_sizes]
        else:
            cells += ["skipped"] + ["-" for _ in args.chunk_sizes]
        rows.append("| " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)

    skipped = [L for L in args.lengths if L > args.naive_max]
    lines = [
        f"- machine: {machine()}",
        "- config: " + ", ".join(f"{k} {v}" for k, v in HEADS.items()) + "; float32; D per head, dt_bias, "
        "dt_softplus, z=None (as Megatron's MambaMixer calls it); gradients for x, dt, A, B, C, D, dt_bias",
        f"- chunked: best and median of {args.repeats} runs after one warm-up; naive: best of {args.naive_repeats}; "
        "runs interleaved round by round"
        + (f"; naive skipped at {', '.join(map(str, skipped))} tokens" if skipped else ""),
        "- shared CPU (other people's jobs were running): medians are noisy; best-of-N is the steadier figure",
        "",
        header,
        rule,
        *rows,
    ]
    if args.record:
        command = " ".join(["python benchmarks/bench_ssd_scan.py", *sys.argv[1:]])
        with (REPO / "docs" / "benchmarks.md").open("a") as fh:
            fh.write(f"\n## SSD scan: chunked vs naive recurrence (benchmarks/bench_ssd_scan.py)\n\n"
                     f"Command: `{command}` ({time.strftime('%Y-%m-%d')})\n\n" + "\n".join(lines) + "\n")
        print("appended to docs/benchmarks.md")


if __name__ == "__main__":
    main()
