"""SFT tokens/s against pretraining's on the same model, sequence length and batch, one CPU process.

Both sides are the real steps in one process: ``stages/pretrain.py``'s data (:func:`build_data`,
the `tiny` recipe's GPTDataset blend) with :func:`lm_forward_step`, and ``stages/sft.py``'s data
(:func:`build_sft_dataset` on the bundled math worked solutions, chat template ``auto``) with
:func:`sft_forward_step`, each through :class:`DatasetBatches` and the shared
:func:`nemo_reason.training.step.train_step`, on two train states built alike (``tiny``, fp32,
random weights, same seed). After a warm-up of ``--steps`` steps each, ``--repeats`` blocks of
``--steps`` steps per side, alternating one step of pretraining and one of SFT; reported: tokens/s
at each side's median and best step time, and the median of the per-block ratios (the machine is
shared: medians of interleaved steps are what stays comparable).

Tokens/s counts every token fed (``global_batch_size x seq_length`` per step, what the loop's
``tokens_per_s`` reports on both sides), not only the loss tokens (SFT trains on the assistant's
tokens only; the share is printed).

Two settings, both at the recipe's global batch of 16 sequences of ``--seq-length`` tokens (256: the
bundled math conversations run up to about 200 tokens, longer than the recipe's 128):

- packed SFT (one row of several conversations per micro-batch, attention and positions reset at
  each boundary: ``trainer.micro_batch_size=1``, as packing requires) against pretraining at
  micro-batch 1;
- unpacked SFT (one conversation per row, right-padded) against pretraining at the recipe's
  micro-batch 8.

Target: SFT within 5% of pretraining (ratio >= 0.95). ``--profile`` prints a cProfile of the SFT
steps of the first setting. ``--record`` appends a dated subsection to the SFT section of
docs/benchmarks.md.

    python benchmarks/bench_sft.py --steps 10 --repeats 5 [--record]
"""

from machine import append_to_section, describe
from megatron_env import single_process
import argparse
import cProfile
import datetime
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SETTINGS = [("packed", True, 1), ("unpacked", False, 8)]  # name, packed, micro-batch size


def _megatron():
    return single_process()


def sides(total_steps: int, packed: bool, mbs: int, seq_length: int, dims, workdir: Path):
    """``{"pretrain": run, "sft": run}``; ``run(n)`` trains n steps and returns their seconds."""
    from nemo_reason.backend import dist as bdist
    from nemo_reason.config.store import compose
    from nemo_reason.data.loader import build_data
    from nemo_reason.data.sft import build_sft_dataset
    from nemo_reason.stages import StepContext
    from nemo_reason.training.batches import DatasetBatches
    from nemo_reason.training.losses import lm_forward_step, sft_forward_step
    from nemo_reason.training.state import build_train_state
    from nemo_reason.training.step import train_step

    cfg = compose("tiny", [f"trainer.max_steps={total_steps}", f"trainer.micro_batch_size={mbs}",
                           f"trainer.seq_length={seq_length}",
                           "trainer.eval_every=0", "run.resume=false"])
    t = cfg.trainer
    ctx = StepContext(dims=dims, run_dir=workdir, step_dir=workdir, step_name="bench")
    data = build_data(cfg, dims.dp)
    tok = data.tokenizer
    sft = build_sft_dataset(["bundled:math"], tok, t.seq_length, packed=packed, seed=cfg.run.seed,
                            cache_dir=cfg.data.cache_dir)
    sft.num_samples = total_steps * t.global_batch_size
    info = dict(sft.stats, seq_length=t.seq_length, global_batch=t.global_batch_size, micro_batch=mbs)
    out = {}
    for name, dataset, fwd, bundle in (("pretrain", data.train, lm_forward_step, data),
                                       ("sft", sft, sft_forward_step, None)):
        bdist.seed_everything(cfg.run.seed)
        state = build_train_state(cfg, ctx, tok.vocab_size)
        batches = DatasetBatches(dataset, state.cfg.trainer, dims, bundle)

        def run(n, state=state, batches=batches, fwd=fwd):
            t0 = time.perf_counter()
            for _ in range(n):
                r = train_step(state, fwd, batches.iterator(state), batches.num_micro_batches(state.step),
                               t.seq_length, t.micro_batch_size)
                state.consumed += batches.samples_per_step
                assert r.update_ok
            return time.perf_counter() - t0

        out[name] = run
        out[name + "/tokens_per_step"] = batches.tokens_per_step
    return out, info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per timed block")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seq-length", type=int, default=256, help="the bundled math conversations need up to ~200")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    dims = _megatron()
    rows, notes = [], []
    total = args.steps * (args.repeats + 1) + (args.steps if args.profile else 0)
    with tempfile.TemporaryDirectory() as d:
        for name, packed, mbs in SETTINGS:
            run, info = sides(total, packed, mbs, args.seq_length, dims, Path(d))
            tps = run["pretrain/tokens_per_step"]
            assert tps == run["sft/tokens_per_step"]
            per = {"pretrain": [], "sft": []}
            steps = {"pretrain": [], "sft": []}  # seconds of every timed step
            run["pretrain"](args.steps), run["sft"](args.steps)  # warm-up
            for i in range(args.repeats):  # a block: steps alternating one by one, pretrain then SFT
                secs = {"pretrain": 0.0, "sft": 0.0}
                for _ in range(args.steps):
                    for side in ("pretrain", "sft"):
                        steps[side].append(run[side](1))
                        secs[side] += steps[side][-1]
                for side in ("pretrain", "sft"):
                    per[side].append(tps * args.steps / secs[side])
                print(f"{name} block {i + 1}: pretrain {per['pretrain'][-1]:,.0f} tok/s | SFT {per['sft'][-1]:,.0f} "
                      f"tok/s | ratio {per['sft'][-1] / per['pretrain'][-1]:.3f}", flush=True)
            if args.profile and packed:
                prof = cProfile.Profile()
                prof.runcall(run["sft"], args.steps)
                pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
            pm, sm = (tps / statistics.median(steps[side]) for side in ("pretrain", "sft"))
            pb, sb = (tps / min(steps[side]) for side in ("pretrain", "sft"))
            ratios = [s / p for s, p in zip(per["sft"], per["pretrain"])]
            rows.append((name, mbs, pm, pb, sm, sb, sm / pm, statistics.median(ratios), info))
            notes.append(f"- {name} SFT: {info['conversations']:,} math conversations, {info['samples_per_epoch']:,} "
                         f"samples per epoch, {100 * info['fill']:.0f}% of each row filled, "
                         f"{info['trained_tokens']:,} trained (assistant) tokens per epoch")
    table = ["| setting | micro-batch | pretrain tok/s at the median step (best step) | SFT tok/s median (best) "
             "| SFT / pretrain (median steps) | median of per-block ratios |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, mbs, pm, pb, sm, sb, r, rr, _ in rows:
        table.append(f"| {name} | {mbs} | {pm:,.0f} ({pb:,.0f}) | {sm:,.0f} ({sb:,.0f}) | {r:.3f} | {rr:.3f} |")
    lines = [f"- machine: {describe(threads=True, load=True)}",
             f"- tiny recipe (GPTModel, random weights), fp32, 1 process, global batch 16 x {args.seq_length} tokens; "
             f"tokens/s counts every token fed (16 x {args.seq_length} per step) on both sides; {args.repeats} blocks of {args.steps} "
             f"steps per side, alternating step by step, after a warm-up", *notes, "", *table, "",
             "Target: SFT / pretrain >= 0.95."]
    print("\n".join(lines))
    if args.record:
        cmd = " ".join(["python benchmarks/bench_sft.py", *sys.argv[1:]]).replace(" --record", "")
        record(REPO / "docs" / "benchmarks.md", f"### {datetime.date.today()}: `{cmd} --record`\n\n" + "\n".join(lines))


SECTION = "## SFT vs pretraining tokens/s (benchmarks/bench_sft.py)"


def record(doc: Path, block: str) -> None:
    """Append ``block`` (a dated ``###`` subsection) at the end of the SFT section of ``doc``."""
    append_to_section(doc, SECTION, block)


if __name__ == "__main__":
    main()
