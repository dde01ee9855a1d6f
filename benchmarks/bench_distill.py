"""A distill step against a student training step plus one teacher forward, one CPU process.

Target (issue 13, point 6): ``distill <= (student step + teacher forward) x 1.10``. All three are
the real code on the same micro-batches (``tiny`` recipe shapes: global batch 16, micro-batch 8,
128 tokens, fp32, random weights): the student step is :func:`train_step` with the LM loss on a
plain student state; the teacher forward is :func:`eval_step` (forward-only schedule) on the frozen
teacher state; the distill step is :func:`train_step` with :func:`distill_forward_step` on the
distill state (teacher inside the student's wrapper, the fused logit KL; ``--lm-weight W`` adds the
student's LM loss with that weight, which at the default 0 is not computed; ``--hidden`` adds the
hidden-state cosine through a projection). The teacher forward is the wrapper's own teacher (whose
LM loss modelopt replaces by zeros: logits only, the strict baseline); a second teacher built from the
same checkpoint outside the wrapper gives the ratio against a forward with its CE as well.
Teacher: ``tiny`` (4 layers x 128); student: 2 layers x 64. After a warm-up, ``--repeats`` rounds of one step of each, interleaved;
reported: medians and the median of the per-round ratios, in wall and in process CPU time (the
machine is shared: ratios of interleaved steps are what stays comparable, and CPU time is the less
disturbed by the other processes), with the system time and minor page faults of each. glibc keeps
freed memory as the distill step sets it (:mod:`nemo_reason.backend.allocator`; ``--glibc-default``:
not). The bare teacher shares its module with the distill wrapper, whose capture hooks keep its
output: dropped after each teacher forward, as the wrapper's loss does. ``--record`` appends a dated
subsection to the distillation section of docs/benchmarks.md.

    python benchmarks/bench_distill.py --repeats 20 [--hidden] [--lm-weight 0.5] [--glibc-default] [--record]
"""

from machine import append_to_section, describe
import argparse
import dataclasses
import datetime
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

GLOBAL, MBS, SEQ, VOCAB = 16, 8, 128, 4096
SECTION = "## Distillation step cost (`benchmarks/bench_distill.py`)"
STUDENT = ["model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=256", "model.num_attention_heads=2",
           "model.num_query_groups=2"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--hidden", action="store_true")
    ap.add_argument("--lm-weight", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--glibc-default", action="store_true", help="leave glibc's malloc trimming as it is")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    from nemo_reason.backend import dist as bdist
    from nemo_reason.backend import prepare
    from nemo_reason.checkpoint import io as ckpt
    from nemo_reason.backend.allocator import keep_freed_memory
    from nemo_reason.compress.distill import distill_forward_step, distillation_model_of
    from nemo_reason.config.store import compose
    from nemo_reason.launch.ports import free_port
    from nemo_reason.parallel import ParallelDims
    from nemo_reason.stages import StepContext, load_builtin_steps
    from nemo_reason.stages.distill import DistillConfig, build_distill_states
    from nemo_reason.training.losses import lm_forward_step
    from nemo_reason.training.state import build_train_state
    from nemo_reason.training.step import eval_step, train_step

    kept = keep_freed_memory() if not a.glibc_default else False  # as the distill step does
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
        # A teacher of its own, outside the wrapper (which replaces its LM loss by zeros): with its CE.
        plain_teacher = build_train_state(cfg, ctx, VOCAB, init_checkpoint=paths["teacher"],
                                          build_optimizer_state=False)
        step = DistillConfig(type="distill", teacher="x", hidden_weight=0.5 if a.hidden else 0.0,
                             lm_weight=a.lm_weight)
        distill, teacher = build_distill_states(cfg, ctx, VOCAB, step, paths["student"], paths["teacher"])

        def timed(fn):  # (wall, CPU time of this process, minor page faults): CPU time is the less
            r0, t0, c0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), time.process_time()
            fn()  # disturbed by a shared machine
            t1, c1, r1 = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
            return t1 - t0, c1 - c0, r1.ru_minflt - r0.ru_minflt, r1.ru_stime - r0.ru_stime

        hooked = [t for _, t in distillation_model_of(distill.model[0])._layers_to_loss]

        def teacher_forward():
            eval_step(teacher, lm_forward_step, iter(micro), len(micro), SEQ, MBS)
            for layer in hooked:  # the distill wrapper's capture hooks fire on the bare teacher too: drop
                layer._intermediate_output = None  # what they kept, as the wrapper's loss does

        runs = {
            "student": lambda: train_step(student, lm_forward_step, iter(micro), len(micro), SEQ, MBS),
            "teacher_fwd": teacher_forward,
            "distill": lambda: train_step(distill, distill_forward_step, iter(micro), len(micro), SEQ, MBS),
            "teacher_fwd_ce": lambda: eval_step(plain_teacher, lm_forward_step, iter(micro), len(micro), SEQ, MBS),
        }
        for _ in range(a.warmup):
            for fn in runs.values():
                fn()
        times = {k: [] for k in runs}
        cpu = {k: [] for k in runs}
        faults = {k: [] for k in runs}
        system = {k: [] for k in runs}
        ratios, cpu_ratios, ce_ratios = [], [], []
        for _ in range(a.repeats):
            t = {k: timed(fn) for k, fn in runs.items()}
            for k in runs:
                times[k].append(t[k][0])
                cpu[k].append(t[k][1])
                faults[k].append(t[k][2])
                system[k].append(t[k][3])
            ratios.append(t["distill"][0] / (t["student"][0] + t["teacher_fwd"][0]))
            cpu_ratios.append(t["distill"][1] / (t["student"][1] + t["teacher_fwd"][1]))
            ce_ratios.append(t["distill"][1] / (t["student"][1] + t["teacher_fwd_ce"][1]))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    med_cpu = {k: statistics.median(v) * 1e3 for k, v in cpu.items()}
    med_flt = {k: statistics.median(v) for k, v in faults.items()}
    med_sys = {k: statistics.median(v) * 1e3 for k, v in system.items()}
    ratio, cpu_ratio = statistics.median(ratios), statistics.median(cpu_ratios)
    what = ", fused logit KL" + (f" + LM loss x {a.lm_weight}" if a.lm_weight else
                                 " (lm_weight 0: no LM loss computed)")
    what += " + hidden-state cosine loss" if a.hidden else ""
    lines = [f"- student step {med['student']:.1f} ms, teacher forward {med['teacher_fwd']:.1f} ms, "
             f"distill step {med['distill']:.1f} ms (medians of {a.repeats} interleaved rounds)",
             f"- the same in process CPU time: {med_cpu['student']:.1f}, {med_cpu['teacher_fwd']:.1f}, "
             f"{med_cpu['distill']:.1f} ms, of it system time {med_sys['student']:.1f}, {med_sys['teacher_fwd']:.1f}, "
             f"{med_sys['distill']:.1f} ms; minor page faults per step {med_flt['student']:.0f}, "
             f"{med_flt['teacher_fwd']:.0f}, {med_flt['distill']:.0f} (glibc "
             + ("keeping freed memory: backend/allocator.py)" if kept else "defaults)"),
             f"- distill / (student + teacher forward): median ratio **{ratio:.3f}** wall, "
             f"**{cpu_ratio:.3f}** CPU time (target <= 1.10){what}",
             f"- against a teacher forward that also computes its own LM loss ({med_cpu['teacher_fwd_ce']:.1f} ms "
             f"CPU: a teacher outside the wrapper, which zeroes it): {statistics.median(ce_ratios):.3f} CPU time"]
    print("\n".join(lines))
    if a.record:
        doc = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
        flags = ((" --hidden" if a.hidden else "") + (f" --lm-weight {a.lm_weight}" if a.lm_weight else "")
                 + (" --glibc-default" if a.glibc_default else ""))
        head = (f"### {datetime.date.today()}: `benchmarks/bench_distill.py{flags}`\n\n"
                f"{describe(load=True)}, {a.threads} torch thread(s). Teacher `tiny` (4 x 128), "
                f"student 2 x 64, vocabulary {VOCAB}, global batch {GLOBAL} x {SEQ} tokens in micro-batches of {MBS}, "
                "fp32.\n\n")
        append_to_section(doc, SECTION, head + "\n".join(lines) + "\n")
    ParallelDims.destroy()
    bdist.destroy_process_group()


if __name__ == "__main__":
    main()
