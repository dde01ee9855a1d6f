"""One GRPO step: our `grpo` step against TRL's ``GRPOTrainer``, same architecture and batch, one process.

Both sides train the dense `tiny` architecture from random weights (ours: the recipe's GPTModel
through ``build_train_state``; TRL: HF ``NemotronForCausalLM`` with the same sizes,
benchmarks/hf_models.py) on the same batch: 8 prompts of the bundled math training corpus per step
(the same prompts, in the same order, step by step: TRL's dataset is our step's prompt stream, drawn
from a second source of the same config) x 4 samples, 32 new tokens at temperature 1
(no top-k/top-p), rewards from our math verifier (on the TRL side through a TRL reward function
calling :func:`nemo_reason.rewards.batch.score_batch`), group-normalised advantages, a clipped
token-level loss (clip 0.2 / 0.28), no dynamic sampling (ours ``dynamic_sampling=false``: TRL
neither drops nor refills groups), no KL (TRL ``beta=0``), one optimizer step per rollout (TRL
``num_iterations=1``, one generation batch = one optimizer batch, no gradient accumulation), fp32,
one torch thread, the same bundled BPE tokenizer (wrapped as a ``PreTrainedTokenizerFast`` for TRL).

Ours is the real step code: :class:`nemo_reason.stages.grpo.GRPOBatches` (rollout by the model being
trained, scoring, advantages, micro-batches) then :func:`nemo_reason.training.step.train_step` over
:func:`grpo_forward_step`, what ``run_loop`` does per step, with one micro-batch of 32 sequences and
``trainer.seq_length`` = the longest prompt + 32. TRL runs its own ``train()``; a callback times each
of its optimizer steps (``on_step_begin`` -> ``on_step_end``: generation, scoring, loss, backward,
clip, optimizer) and runs one of our steps right after, so the two interleave in one run. The first
step of each side is a warm-up. Split of a step: ours from timers around ``generate`` and
``score_batch``; TRL's from its own profiling contexts (``transformers.generate``, the reward
function, ``_prepare_inputs``), read by hooking ``ProfilingContext._log_metrics``.

Differences left on purpose: our sampler also checks the math domain's stop string and compacts
finished rows; TRL pads to the batch's longest sequence, ours to ``trainer.seq_length``. With random
weights almost every response runs the full 32 tokens on both sides (the mean lengths are printed).

TRL is a benchmark-only dependency, measured with trl 1.16.0 (accelerate 1.15.0, datasets 5.2.0,
transformers 5.24.0) installed without touching torch or megatron-core::

    pip install --no-deps trl==1.16.0 accelerate==1.15.0 datasets==5.2.0
    pip install dill multiprocess pandas xxhash     # datasets' and trl's remaining requirements
    pip check

    python benchmarks/bench_grpo.py --repeats 7 [--record]
"""

from machine import describe
from megatron_env import single_process
import argparse
import datetime
import statistics
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PROMPTS, GROUP, NEW = 8, 4, 32
LR = 1e-5


def _megatron():
    return single_process()


class _Timer:
    """Seconds spent in wrapped functions, by name, since the last clear()."""

    def __init__(self):
        self.s: dict = {}

    def wrap(self, name, fn):
        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.s[name] = self.s.get(name, 0.0) + time.perf_counter() - t
        timed.__wrapped__ = fn
        return timed


def ours(steps: int, workdir: Path, tok, seed: int):
    """Our step on a fresh train state; returns ``run()`` -> (seconds, split, mean response length),
    the number of parameters, ``trainer.seq_length`` and the prompts of every step, in order."""
    import nemo_reason.rewards.batch as rbatch
    import nemo_reason.rollout.sampler as sampler
    import nemo_reason.stages.grpo as grpo
    from nemo_reason.backend import dist as bdist
    from nemo_reason.config.store import compose
    from nemo_reason.stages import StepContext
    from nemo_reason.training.step import train_step
    from nemo_reason.training.state import build_train_state

    fields = dict(type="grpo", domains=["math"], prompts_per_step=PROMPTS, group_size=GROUP, max_new_tokens=NEW,
                  temperature=1.0, dynamic_sampling=False)  # TRL has no dynamic sampling (no dropping, no refills)
    step = grpo.GRPOConfig(**fields)
    step.validate()
    dims = _megatron()
    ctx = StepContext(dims=dims, run_dir=workdir, step_dir=workdir, step_name="grpo", step=step)
    base = compose("tiny", [f"run.seed={seed}"])
    prompts = _prompts(step, base, ctx, tok, steps)
    seq = max(len(tok.tokenize(p.text)) for p in prompts) + NEW
    cfg = compose("tiny", [f"trainer.global_batch_size={PROMPTS * GROUP}",
                           f"trainer.micro_batch_size={PROMPTS * GROUP}", f"trainer.seq_length={seq}",
                           f"optim.lr={LR}", f"optim.min_lr={LR}", "optim.warmup_steps=0", "run.resume=false",
                           f"run.seed={seed}"])
    step.check(cfg)
    bdist.seed_everything(seed)
    state = build_train_state(cfg, ctx, tok.vocab_size)
    batches = grpo.GRPOBatches(step, state.cfg, ctx, tok)
    t = state.cfg.trainer
    timer = _Timer()
    # The step imports these where it runs (or at module level): time them wherever it looks them up.
    sampler.generate = timer.wrap("rollout", sampler.generate)
    rbatch.score_batch = timer.wrap("scoring", rbatch.score_batch)
    for name, mod in (("generate", grpo), ("score_batch", grpo)):
        if hasattr(mod, name):
            setattr(mod, name, timer.wrap("rollout" if name == "generate" else "scoring", getattr(mod, name)))
    forward = partial(grpo.grpo_forward_step, step)
    params = sum(p.numel() for p in state.chunks[0].parameters())

    def run():
        timer.s.clear()
        t0 = time.perf_counter()
        it = batches.iterator(state)
        t1 = time.perf_counter()
        out = train_step(state, forward, it, batches.num_micro_batches(state.step), t.seq_length, t.micro_batch_size)
        total = time.perf_counter() - t0
        state.consumed += batches.samples_per_step
        assert out.update_ok
        # Only the prompts TRL gets too were drawn (no refills): the same stream position.
        assert batches.prompts.taken == state.step * PROMPTS, (batches.prompts.taken, state.step)
        rec = batches.record(state.step - 1)
        roll, score = timer.s.get("rollout", 0.0), timer.s.get("scoring", 0.0)
        prep = max(0.0, (t1 - t0) - roll - score)
        return total, {"rollout": roll, "scoring": score, "batch": prep,
                       "update": total - roll - score - prep}, rec.get("response_length", float("nan"))

    return run, params, seq, prompts


def _prompts(step, cfg, ctx, tok, steps: int):
    """The prompts our step draws in its first ``steps`` steps (a second stream of the same config:
    the order depends only on the seed and the count taken), for TRL's dataset."""
    from nemo_reason.rl.prompts import build_prompt_source

    source = build_prompt_source(step, cfg, ctx, tok, None, log=lambda *a, **k: None)
    return [p for _ in range(steps) for p in source.take(PROMPTS)]


def trl_trainer(records, workdir: Path, tok, seed: int, on_step):
    """TRL's GRPOTrainer over the same prompts; ``on_step(seconds, split, mean length)`` after each step."""
    import torch
    import transformers
    import trl
    import trl.extras.profiling as prof
    from datasets import Dataset
    from hf_models import hf_model

    from nemo_reason.rewards.batch import score_batch

    score_batch = getattr(score_batch, "__wrapped__", score_batch)  # not our side's timer

    def math_verify(prompts, completions, index, **_):  # our verifier (each prompt's), as a TRL reward function
        scores = [0.0] * len(index)
        by_verifier: dict = {}
        for j, i in enumerate(index):
            by_verifier.setdefault(records[i].verifier, []).append(j)
        for verifier, js in by_verifier.items():
            got = score_batch(verifier, [records[index[j]].sample for j in js], [completions[j] for j in js],
                              workers=0).scores
            for j, v in zip(js, got):
                scores[j] = float(v)
        return scores

    inv = tok.inv_vocab
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok._tok, eos_token=inv[tok.eod],
                                                  pad_token=inv[tok.pad])
    torch.manual_seed(seed)
    model = hf_model("dense", tok.vocab_size, bos_token_id=tok.eod, eos_token_id=tok.eod, pad_token_id=tok.pad)
    args = trl.GRPOConfig(
        output_dir=str(workdir / "trl"), use_cpu=True, bf16=False, fp16=False, seed=seed, report_to=[],
        max_steps=len(records) // PROMPTS, per_device_train_batch_size=PROMPTS * GROUP, gradient_accumulation_steps=1,
        num_generations=GROUP, max_completion_length=NEW, temperature=1.0, top_p=1.0, top_k=0, beta=0.0,
        num_iterations=1, loss_type="dapo", epsilon=0.2, epsilon_high=0.28, scale_rewards="group",
        shuffle_dataset=False, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
        logging_strategy="no", save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, log_completions=False)
    spans: dict = {}

    def log_metrics(self, duration):  # TRL's own profiling spans, kept instead of sent to a tracker
        name = self.name.split(".", 1)[-1]
        spans[name] = spans.get(name, 0.0) + duration

    prof.ProfilingContext._log_metrics = log_metrics

    class Interleave(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            spans.clear()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            total = time.perf_counter() - self.t0
            roll, score = spans.get("transformers.generate", 0.0), spans.get("math_verify", 0.0)
            prep = spans.get("_prepare_inputs", 0.0)
            lengths = trainer._metrics["train"].get("completions/mean_length") or [float("nan")]
            on_step(total, {"rollout": roll, "scoring": score, "batch": max(0.0, prep - roll - score),
                            "update": total - prep}, lengths[-1])

    ds = Dataset.from_list([{"prompt": p.text, "index": i} for i, p in enumerate(records)])
    trainer = trl.GRPOTrainer(model=model, reward_funcs=[math_verify], args=args, train_dataset=ds,
                              processing_class=hf_tok, callbacks=[Interleave()])
    params = sum(p.numel() for p in model.parameters())
    return trainer, params, f"trl {trl.__version__}, transformers {transformers.__version__}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7, help="timed steps per side (after one warm-up step each)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from nemo_reason.data.tokenizer import build_tokenizer

    tok = build_tokenizer("bundled")
    steps = args.repeats + 1
    rows = {"ours": [], "trl": []}
    with tempfile.TemporaryDirectory() as d:
        run_ours, our_params, seq, records = ours(steps, Path(d), tok, args.seed)

        def on_step(seconds, split, length):
            rows["trl"].append((seconds, split, length))
            rows["ours"].append(run_ours())
            i = len(rows["trl"])
            (a, sa, la), (b, sb, lb) = rows["ours"][-1], rows["trl"][-1]
            print(f"step {i}{' (warm-up)' if i == 1 else ''}: ours {a:.3f} s (rollout {sa['rollout']:.3f}, "
                  f"scoring {sa['scoring']:.3f}, update {sa['update']:.3f}; length {la:.1f}) | TRL {b:.3f} s "
                  f"(generate {sb['rollout']:.3f}, reward {sb['scoring']:.3f}, update {sb['update']:.3f}; "
                  f"length {lb:.1f}) | threads {torch.get_num_threads()}", flush=True)

        trainer, trl_params, trl_name = trl_trainer(records, Path(d), tok, args.seed, on_step)
        trainer.train()
    assert torch.get_num_threads() == 1, torch.get_num_threads()

    def summary(side):
        timed = rows[side][1:]
        secs = [r[0] for r in timed]
        split = {k: statistics.median(r[1][k] for r in timed) for k in timed[0][1]}
        return statistics.median(secs), min(secs), split, statistics.mean(r[2] for r in timed)

    (om, ob, osplit, olen), (tm, tb, tsplit, tlen) = summary("ours"), summary("trl")
    table = ["| side | s/step median (best) | steps/s median (best) | rollout s | scoring s | batch prep s "
             "| update s | mean response tokens |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m, b, sp, ln in (("nemo-reason grpo", om, ob, osplit, olen), ("TRL GRPOTrainer", tm, tb, tsplit, tlen)):
        table.append(f"| {name} | {m:.3f} ({b:.3f}) | {1 / m:.2f} ({1 / b:.2f}) | {sp['rollout']:.3f} | "
                     f"{sp['scoring']:.3f} | {sp['batch']:.3f} | {sp['update']:.3f} | {ln:.1f} |")
    ratio_m, ratio_b = tm / om, tb / ob
    pairs = statistics.median(b[0] / a[0] for a, b in zip(rows["ours"][1:], rows["trl"][1:]))
    lines = [f"- machine: {describe(threads=True, load=True)}",
             f"- {trl_name}; ours {our_params:,} parameters (tiny GPTModel), TRL's NemotronForCausalLM "
             f"{trl_params:,}; random weights, fp32, vocabulary {tok.vocab_size}",
             f"- {PROMPTS} prompts (bundled math, the same per step) x {GROUP} samples, {NEW} new tokens, temperature 1, "
             f"math verifier, no dynamic sampling, no KL, one optimizer step per rollout; ours seq_length {seq}, one micro-batch of "
             f"{PROMPTS * GROUP}; {args.repeats} interleaved steps per side after a warm-up step; split columns are "
             "medians",
             "", *table, "",
             f"ours / TRL steps/s: **{ratio_m:.2f}x** (medians), {ratio_b:.2f}x (best), {pairs:.2f}x (median of "
             "the per-step ratios, each step against the TRL step just before it); goal 2x, floor 1.0x"]
    print("\n".join(lines))
    if args.record:
        doc = REPO / "docs" / "benchmarks.md"
        cmd = " ".join(["python benchmarks/bench_grpo.py", *sys.argv[1:]]).replace(" --record", "")
        doc.write_text(doc.read_text().rstrip("\n") + "\n\n## GRPO step vs TRL GRPOTrainer (benchmarks/bench_grpo.py)\n\n"
                       f"Command: `{cmd} --record` ({datetime.date.today()})\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
