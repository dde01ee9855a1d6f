"""Peak memory and time of ``nemo-reason import-hf`` / ``export-hf`` on the largest Llama that fits here.

Writes a random Llama-architecture checkpoint (bf16 safetensors in shards of ``--shard-gb``, names and
shapes from ``transformers``' own class built on the meta device, so nothing of the model is ever
held whole by this script), then runs each conversion in a fresh process and reads that process's
peak resident memory (``VmHWM``):

- import --no-verify, import (with the parity gate), export --no-verify, export (with the gate).

The claim checked: conversion streams, so its peak is about one fp32 copy of the model (our model)
plus one shard (export) or the tensors of one mapping (import), not two copies plus a state dict;
the gate holds one model at a time. Results go to docs/benchmarks.md (``--record``).

    python benchmarks/bench_convert.py --hidden 1536 --layers 16 --ffn 4096 --vocab 32000 --record
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_random_llama(folder: Path, args) -> dict:
    import torch
    import transformers
    from safetensors.torch import save_file

    sys.path.insert(0, str(REPO))
    from tests.unit.hf_tiny import tiny_tokenizer

    cfg = transformers.LlamaConfig(hidden_size=args.hidden, intermediate_size=args.ffn,
                                   num_hidden_layers=args.layers, num_attention_heads=args.heads,
                                   num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
                                   max_position_embeddings=4096, rope_theta=500000.0, dtype="bfloat16")
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in transformers.AutoModelForCausalLM.from_config(cfg).state_dict().items()}
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    limit = int(args.shard_gb * 1024 ** 3)
    shards, buf, size, weight_map = [], {}, 0, {}

    def flush():
        nonlocal buf, size
        name = f"model-{len(shards) + 1:05d}.safetensors"
        save_file(buf, str(folder / name), metadata={"format": "pt"})
        shards.append(name)
        weight_map.update({k: name for k in buf})
        buf, size = {}, 0

    for name, shape in shapes.items():
        t = (1 + 0.1 * torch.randn(shape, generator=g)) if "norm" in name else 0.02 * torch.randn(shape, generator=g)
        t = t.to(torch.bfloat16)
        if buf and size + t.numel() * 2 > limit:
            flush()
        buf[name] = t
        size += t.numel() * 2
    flush()
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(math_prod(s) * 2 for s in shapes.values())}, "weight_map": weight_map}))
    cfg.save_pretrained(str(folder))
    tok = tiny_tokenizer(folder.parent / "tok")
    for f in tok.iterdir():
        shutil.copyfile(f, folder / f.name)
    params = sum(math_prod(s) for s in shapes.values())
    return {"params": params, "shards": len(shards), "largest_shard_bytes": max(
        (folder / s).stat().st_size for s in shards)}


def math_prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def child(argv) -> None:
    """Run one CLI command in this process; print its peak RSS (bytes) as the last line."""
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    from nemo_reason.cli import main

    t0 = time.time()
    rc = main(argv)
    print(json.dumps({"rc": rc, "seconds": time.time() - t0, "peak_rss": peak_rss()}))


def peak_rss() -> int:
    """This process's peak resident memory since it started (``VmHWM``). Not ``ru_maxrss``: Linux
    carries that across ``execve``, so a child of a big parent would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(argv) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *argv], cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    last = proc.stdout.strip().splitlines()[-1]
    try:
        out = json.loads(last)
    except ValueError:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stdout[-4000:]}")
    if out["rc"] != 0:
        raise SystemExit(f"{' '.join(argv)} exited {out['rc']}:\n{proc.stdout[-4000:]}")
    out["parity"] = next((l for l in proc.stdout.splitlines() if "parity (" in l), "")
    return out


def gib(n: float) -> str:
    return f"{n / 1024 ** 3:.2f} GiB"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=1536)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--ffn", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--shard-gb", type=float, default=0.5)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--record", action="store_true", help="append the table to docs/benchmarks.md")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_convert_"))
    try:
        hf = work / "hf"
        t0 = time.time()
        info = write_random_llama(hf, args)
        made = time.time() - t0
        fp32 = info["params"] * 4
        # The fixed cost of a conversion process (libraries, a 2-layer hidden-64 model): subtracted.
        tiny = argparse.Namespace(hidden=64, layers=2, ffn=128, heads=4, kv_heads=2, vocab=512, shard_gb=1.0)
        write_random_llama(work / "tiny" / "hf", tiny)
        base = measure(["import-hf", str(work / "tiny" / "hf"), "--output", str(work / "tiny" / "ckpt"),
                        "--no-verify"])["peak_rss"]
        rows = []
        for label, argv in [
            ("import-hf --no-verify", ["import-hf", str(hf), "--output", str(work / "ckpt_nv"), "--no-verify"]),
            ("import-hf (gate)", ["import-hf", str(hf), "--output", str(work / "ckpt")]),
            ("export-hf --no-verify", ["export-hf", str(work / "ckpt"), "--output", str(work / "out_nv"), "--no-verify",
                                       "--max-shard-size", f"{int(args.shard_gb * 1024)}MB"]),
            ("export-hf (gate)", ["export-hf", str(work / "ckpt"), "--output", str(work / "out"),
                                  "--max-shard-size", f"{int(args.shard_gb * 1024)}MB"]),
        ]:
            r = measure(argv)
            rows.append((label, r))
            print(f"{label:24s} {r['seconds']:7.1f} s  peak RSS {gib(r['peak_rss'])}  {r['parity']}", flush=True)
            shutil.rmtree(work / "ckpt_nv", ignore_errors=True)
            shutil.rmtree(work / "out_nv", ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    sys.path.insert(0, str(REPO))
    from benchmarks.machine import append_to_section, describe

    lines = [f"### {time.strftime('%Y-%m-%d')}: Llama {info['params'] / 1e6:.0f}M parameters (hidden {args.hidden}, "
             f"{args.layers} layers, ffn {args.ffn}, {args.heads}/{args.kv_heads} heads, vocab {args.vocab})",
             "", f"Machine: {describe(load=True)}. Source: bf16 safetensors, {info['shards']} shards, largest "
             f"{gib(info['largest_shard_bytes'])}; our model in fp32: {gib(fp32)} (written in {made:.0f} s).", "",
             f"Fixed cost (the same import of a 2-layer, hidden-64 model: libraries and all): {gib(base)}.", "",
             "| command | seconds | peak RSS | peak - fixed | (peak - fixed) / fp32 model |",
             "|---|---|---|---|---|"]
    lines += [f"| `{label}` | {r['seconds']:.1f} | {gib(r['peak_rss'])} | {gib(r['peak_rss'] - base)} | "
              f"{(r['peak_rss'] - base) / fp32:.2f} |" for label, r in rows]
    gate = [f"{label}: {r['parity'].split('): ')[-1]}" for label, r in rows if r["parity"]]
    lines += ["", "Parity: " + "; ".join(gate) if gate else ""]
    block = "\n".join(lines) + "\n"
    print(block)
    if args.record:
        append_to_section(REPO / "docs" / "benchmarks.md",
                          "## Hugging Face import/export memory (benchmarks/bench_convert.py)", block)


if __name__ == "__main__":
    main()
