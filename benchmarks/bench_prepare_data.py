"""prepare-data throughput (MB/s, docs/s) and training-dataloader samples/s, on the bundled corpora.

Builds a JSONL of about ``--mb`` MB from the bundled corpora (math, mcq, code, prose, repeated with
fresh seeds), then runs ``nemo_reason.data.prepare.prepare`` in several configurations, each
``--repeats`` times (median): the bundled BPE and the byte tokenizer (the engine's own ceiling)
at 1 and 2 workers, and the bundled BPE with MinHash dedup and with quality buckets. MB/s counts
the UTF-8 text of the documents. Then the dataloader: Megatron's ``GPTDataset`` over the prepared
prefix (index build time) and ``nemo_reason.data.loader.micro_batches`` over it (samples/s).
``--record`` appends a section to docs/benchmarks.md.

    python benchmarks/bench_prepare_data.py --mb 8 --repeats 3 [--record]
"""

from machine import describe
import argparse
import datetime
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import tokenizers

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_input(path: Path, mb: float) -> tuple:
    from nemo_reason.data.corpora import generate

    n_docs = size = 0
    seed = 0
    with open(path, "w") as f:
        while size < mb * 1e6:
            for name, n in (("math", 2000), ("mcq", 2000), ("code", 500), ("prose", 500)):
                for rec in generate(name, n, seed):
                    line = json.dumps({"text": rec["text"], "domain": rec["domain"]}) + "\n"
                    f.write(line)
                    size += len(rec["text"].encode())
                    n_docs += 1
            seed += 1
    return n_docs, size


def run_prepare(src: Path, out: Path, **kw) -> dict:
    from nemo_reason.data.prepare import PrepareConfig, prepare

    t = time.perf_counter()
    main0, child0 = time.process_time(), _children_cpu()
    res = prepare(PrepareConfig(inputs=[str(src)], output_prefix=str(out), force=True, progress_every=-1, **kw))
    main_cpu, child_cpu = time.process_time() - main0, _children_cpu() - child0
    s = res.stats
    mb = s["bytes"] / 1e6
    return {"wall": time.perf_counter() - t, "mb_per_s": s["mb_per_s"], "docs_per_s": s["docs_per_s"],
            "tokens": s["tokens"], "documents": s["documents"], "prefix": res.prefixes[0], "stats": s,
            "mb_per_cpu_s": mb / (main_cpu + child_cpu), "mb_per_main_cpu_s": mb / main_cpu}


def _children_cpu() -> float:
    """CPU seconds of reaped child processes (the pool's workers, once joined)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def bench_loader(prefix: str, tokenizer, seq: int, mbs: int, samples: int, cache: Path) -> dict:
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    from nemo_reason.data.loader import micro_batches

    cfg = GPTDatasetConfig(random_seed=1234, sequence_length=seq, blend=([prefix], None), split="100,0,0",
                           path_to_cache=str(cache), tokenizer=tokenizer, reset_position_ids=False,
                           reset_attention_mask=False, eod_mask_loss=False, create_attention_mask=False,
                           mmap_bin_files=True)
    t = time.perf_counter()
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [samples, 0, 0], lambda: True, cfg).build()
    build = time.perf_counter() - t
    t = time.perf_counter()
    n = 0
    for batch in micro_batches(train, 0, mbs, 0, 1, samples):
        n += batch["tokens"].shape[0]
    dt = time.perf_counter() - t
    return {"build_s": build, "samples": n, "samples_per_s": n / dt, "tokens_per_s": n * seq / dt}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=8.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--mbs", type=int, default=8)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        os.environ.setdefault("NEMO_REASON_CACHE", str(d / "cache"))
        src = d / "input.jsonl"
        n_docs, size = make_input(src, args.mb)
        from nemo_reason.data.tokenizer import build_tokenizer

        build_tokenizer("bundled")  # trained once into the cache here, not inside a timed run
        print(f"input: {n_docs:,} documents, {size / 1e6:.1f} MB of text", flush=True)
        configs = [("bundled BPE", dict(tokenizer="bundled", workers=1)),
                   ("bundled BPE", dict(tokenizer="bundled", workers=2)),
                   ("byte", dict(tokenizer="byte", workers=1)),
                   ("byte", dict(tokenizer="byte", workers=2)),
                   ("bundled BPE + --dedup minhash", dict(tokenizer="bundled", workers=2, dedup="minhash")),
                   ("bundled BPE + --quality-buckets 0.5,0.8", dict(tokenizer="bundled", workers=2,
                                                                   quality_buckets="0.5,0.8"))]
        results = {i: [] for i in range(len(configs))}
        for r in range(args.repeats):  # interleaved, so load changes hit every configuration alike
            for i, (name, kw) in enumerate(configs):
                res = run_prepare(src, d / f"out{i}", **kw)
                results[i].append(res)
                print(f"repeat {r + 1} | {name}, {kw['workers']} worker(s): {res['mb_per_s']:.2f} MB/s, "
                      f"{res['docs_per_s']:,.0f} docs/s, {res['mb_per_cpu_s']:.2f} MB per CPU-s, "
                      f"main {res['mb_per_main_cpu_s']:.1f} MB per CPU-s", flush=True)
        for i, (name, kw) in enumerate(configs):
            rs = results[i]
            rows.append((name, kw["workers"], statistics.median(r["mb_per_s"] for r in rs),
                         max(r["mb_per_s"] for r in rs), statistics.median(r["docs_per_s"] for r in rs),
                         statistics.median(r["mb_per_cpu_s"] for r in rs),
                         statistics.median(r["mb_per_main_cpu_s"] for r in rs),
                         rs[0]["tokens"], rs[0]["documents"]))
        tok = build_tokenizer("bundled")
        tokens = results[0][0]["tokens"]
        samples = min(4000, max(args.mbs, tokens // (args.seq + 1) - 1))
        loader = bench_loader(results[0][0]["prefix"], tok, args.seq, args.mbs, samples, d / "index")
        print(f"dataloader: {loader}", flush=True)

    lines = [f"Command: `python benchmarks/bench_prepare_data.py --mb {args.mb:g} --repeats {args.repeats}"
             f"{' --record' if args.record else ''}` ({datetime.date.today()})", "",
             f"- machine: {describe(load=True)}, tokenizers {tokenizers.__version__}",
             f"- input: one JSONL of {n_docs:,} bundled-corpus documents (math, mcq, code, prose), "
             f"{size / 1e6:.1f} MB of text; median (and best) of {args.repeats} interleaved runs; MB/s counts the text",
             "- MB per CPU-second: the text divided by the CPU time of all processes (this one and the workers), "
             "the throughput per fully used core, which load from other jobs does not change much; main process: "
             "the text over the deciding process's CPU time, the ceiling for any number of workers",
             "", "| tokenizer / options | workers | wall MB/s median (best) | docs/s median | MB per CPU-s | "
                 "main process MB per CPU-s | tokens | documents kept |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, w, mb_med, mb_best, dps, mb_cpu, mb_main, toks, docs in rows:
        lines.append(f"| {name} | {w} | {mb_med:.2f} ({mb_best:.2f}) | {dps:,.0f} | {mb_cpu:.2f} | {mb_main:.1f} | "
                     f"{toks:,} | {docs:,} |")
    lines += ["", f"- dataloader: Megatron GPTDataset over the bundled-BPE output, sequence {args.seq}, "
                  f"micro-batch {args.mbs}: index build {loader['build_s']:.2f} s for {loader['samples']:,} samples; "
                  f"`micro_batches` {loader['samples_per_s']:,.0f} samples/s ({loader['tokens_per_s'] / 1e6:.2f} M tokens/s)"]
    text = "\n".join(lines)
    print(text)
    if args.record:
        with open(REPO / "docs" / "benchmarks.md", "a") as f:
            f.write("\n## prepare-data throughput and dataloader (benchmarks/bench_prepare_data.py)\n\n" + text + "\n")


if __name__ == "__main__":
    main()
