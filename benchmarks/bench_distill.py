"""A distill step against a student training step plus one teacher forward, one CPU process.

Target (issue 13, point 6): ``distill <= (student step + teacher forward) x 1.10``. All three are
the real code on the same micro-batches (``tiny`` recipe shapes: global batch 16, micro-batch 8,
128 tokens, fp32, random weights): the student step is :func:`train_step` with the LM loss on a
plain student state; the teacher forward is :func:`eval_step` (forward-only schedule) on the frozen
teacher state; the distill step is :func:`train_step` with :func:`distill_forward_step` on the
distill state (teacher inside the student's wrapper, logit KL, LM loss reported without gradient;
``--hidden`` adds the hidden-state cosine through a projection). Teacher: ``tiny`` (4 layers x 128);
student: 2 layers x 64. After a warm-up, ``--repeats`` rounds of one step of each, interleaved;
reported: medians and the median of the per-round ratios (the machine is shared: ratios of
interleaved steps are what stays comparable). ``--record`` appends a section to docs/benchmarks.md.

    python benchmarks/bench_distill.py --repeats 20 [--hidden] [--record]
"""

from machine import describe
import argparse
import dataclasses
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

GLOBAL, MBS, SEQ, VOCAB = 16, 8, 128, 4096
STUDENT = ["model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=256", "model.num_attention_heads=2",
           "model.num_query_groups=2"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--hidden", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    from nemo_reason.backend import dist as bdist
    from nemo_reason.backend import prepare
    from nemo_reason.checkpoint import io as ckpt
    from nemo_reason.compress.distill import distill_forward_step
    from nemo_reason.config.store import compose
    from nemo_reason.launch.ports import free_port
    from nemo_reason.parallel import ParallelDims
    from nemo_reason.stages import StepContext, load_builtin_steps
    from nemo_reason.stages.distill import DistillConfig, build_distill_states
    from nemo_reason.training.losses import lm_forward_step
    from nemo_reason.training.state import build_train_state
    from nemo_reason.training.step import eval_step, train_step

    os.environ.setdefault("MASTER_PORT", str(free_port()))
    bdist.init_process_group()
    prepare("local")
    dims = ParallelDims(1, 1, 1, 1, None, None, 1)
    dims.init()
    load_builtin_steps()
    base = [f"trainer.global_batch_size={GLOBAL}", f"trainer.micro_batch_size={MBS}", f"trainer.seq_length={SEQ}",
            "run.resume=false"]
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, VOCAB, (GLOBAL, SEQ), generator=g)
    batch = {"tokens": tokens, "labels": torch.roll(tokens, -1, 1), "loss_mask": torch.ones(GLOBAL, SEQ),
             "position_ids": torch.arange(SEQ).expand(GLOBAL, SEQ).contiguous()}
    micro = [{k: v[i:i + MBS] for k, v in batch.items()} for i in range(0, GLOBAL, MBS)]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        ctx = StepContext(dims=dims, run_dir=d, step_dir=d, step_name="distill")
        paths = {}
        for name, over in (("teacher", []), ("student", STUDENT)):
            cfg = compose("tiny", [*over, *base])
            s = build_train_state(cfg, ctx, VOCAB)
            paths[name] = ckpt.save(d / name, 0, 0, s.model, s.optimizer, s.scheduler, "{}", bdist.get_rng_state(),
                                    meta={"model": dataclasses.asdict(s.cfg.model)})
        cfg = compose("tiny", base)
        student = build_train_state(cfg, ctx, VOCAB, init_checkpoint=paths["student"])
        step = DistillConfig(type="distill", teacher="x", hidden_weight=0.5 if a.hidden else 0.0)
        distill, teacher = build_distill_states(cfg, ctx, VOCAB, step, paths["student"], paths["teacher"])

        def timed(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

        runs = {
            "student": lambda: train_step(student, lm_forward_step, iter(micro), len(micro), SEQ, MBS),
            "teacher_fwd": lambda: eval_step(teacher, lm_forward_step, iter(micro), len(micro), SEQ, MBS),
            "distill": lambda: train_step(distill, distill_forward_step, iter(micro), len(micro), SEQ, MBS),
        }
        for _ in range(a.warmup):
            for fn in runs.values():
                fn()
        times = {k: [] for k in runs}
        ratios = []
        for _ in range(a.repeats):
            t = {k: timed(fn) for k, fn in runs.items()}
            for k in runs:
                times[k].append(t[k])
            ratios.append(t["distill"] / (t["student"] + t["teacher_fwd"]))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    ratio = statistics.median(ratios)
    lines = [f"- student step {med['student']:.1f} ms, teacher forward {med['teacher_fwd']:.1f} ms, "
             f"distill step {med['distill']:.1f} ms (medians of {a.repeats} interleaved rounds)",
             f"- distill / (student + teacher forward): median ratio **{ratio:.3f}** (target <= 1.10)"
             + (" with the hidden-state cosine loss" if a.hidden else ", logit KL + LM loss reported")]
    print("\n".join(lines))
    if a.record:
        doc = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
        head = (f"\n## Distillation step cost (`benchmarks/bench_distill.py{' --hidden' if a.hidden else ''}`)\n\n"
                f"{datetime.date.today()}, {describe()}, {a.threads} torch thread(s). Teacher `tiny` (4 x 128), "
                f"student 2 x 64, vocabulary {VOCAB}, global batch {GLOBAL} x {SEQ} tokens in micro-batches of {MBS}, "
                "fp32.\n\n")
        with open(doc, "a") as f:
            f.write(head + "\n".join(lines) + "\n")
    ParallelDims.destroy()
    bdist.destroy_process_group()


if __name__ == "__main__":
    main()
