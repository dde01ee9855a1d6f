"""``distill``: knowledge distillation of the step's input checkpoint (the student) from a frozen teacher.

The student is the input checkpoint (the previous step's output, e.g. a pruned model, with the
architecture it records), trained over the shared core on the run's data blend like ``pretrain``;
its optimizer and schedule start fresh. The teacher is any checkpoint (``teacher:`` a checkpoint
folder, or the name of an earlier step of this pipeline, whose final checkpoint it takes), of any
depth, width or type (dense or hybrid), built under the same parallel layout with no optimizer,
frozen, one forward per micro-batch inside the student's. Loss and reports:
:mod:`nemo_reason.compress.distill` (a fused logit KL with temperature in Model-Optimizer's
distillation wrapper, optional hidden-state cosine through a projection, optional LM loss, fixed
weights; at ``lm_weight`` 0 the LM loss is not computed and the step reports no ``loss``).

Checks before any training: the teacher exists and its vocabulary (tokenizer size and padded
logit width) equals the student's. Resumes exactly: the student, its projection, optimizer,
schedule and data position come from this step's checkpoint, the teacher from its own. The
teacher's checkpoint is part of the step's fingerprint (:meth:`DistillConfig.extra_inputs`).

Left out: pipeline parallelism (refused at composition), a teacher under another layout, top-k
or cached teacher logits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from nemo_reason.config.errors import ConfigError
from nemo_reason.config.steps import StepConfig
from nemo_reason.stages import StepContext, StepResult, register_step


@dataclass
class DistillConfig(StepConfig):
    # The teacher: a checkpoint folder (iter_*, or a folder of them: the newest), or the name of an earlier step.
    teacher: str = ""
    # Temperature of the logit KL: teacher and student logits are divided by it (no T^2 factor, as modelopt).
    temperature: float = 1.0
    # Weight of the logit KL, reported as kd_loss.
    kl_weight: float = 1.0
    # Weight of the hidden-state cosine loss (hidden_loss; 0: off), through a projection where widths differ.
    hidden_weight: float = 0.0
    # Hidden-state pairs "student_layer:teacher_layer" (submodule names; one name: both; final: each final norm).
    hidden_layers: List[str] = field(default_factory=lambda: ["final"])
    # Weight of the student's LM loss on the data (0: neither computed nor reported: kd_loss only).
    lm_weight: float = 0.0

    def validate(self) -> None:
        where = f"pipeline step '{self.name or self.type}' (distill)"
        if not self.temperature > 0:
            raise ConfigError(f"{where}: temperature={self.temperature} must be > 0 (1.0: the plain KL)")
        for k in ("kl_weight", "hidden_weight", "lm_weight"):
            if getattr(self, k) < 0:
                raise ConfigError(f"{where}: {k}={getattr(self, k)} must be >= 0")
        if self.kl_weight == self.hidden_weight == self.lm_weight == 0:
            raise ConfigError(f"{where}: kl_weight, hidden_weight and lm_weight are all 0: nothing to train; "
                              "set kl_weight=1.0")
        if self.hidden_weight > 0 and not self.hidden_layers:
            raise ConfigError(f"{where}: hidden_weight={self.hidden_weight} needs hidden_layers, e.g. [final] or "
                              "['decoder.layers.1:decoder.layers.3']")

    def check(self, cfg) -> None:
        where = f"pipeline step '{self.name or self.type}' (distill)"
        if not self.teacher:
            raise ConfigError(f"{where}: no teacher: set teacher=PATH (a checkpoint folder) or the name of an "
                              "earlier step of this pipeline, e.g. teacher: pretrain")
        names = [s.name or s.type for s in cfg.pipeline]
        mine = next((i for i, s in enumerate(cfg.pipeline) if s == self), len(names))
        if self.teacher in names and names.index(self.teacher) >= mine:
            raise ConfigError(f"{where}: teacher={self.teacher!r} is not an earlier step (steps before this one: "
                              f"{', '.join(names[:mine]) or 'none'})")
        if cfg.parallel.pp > 1:
            raise ConfigError(f"{where}: distillation under pipeline parallelism is not supported; set "
                              "overrides: {parallel.pp: 1} on this step (TP, CP and DP work)")

    def extra_inputs(self, run_dir: Path, names: List[str]) -> Dict[str, Optional[Path]]:
        """Checkpoints this step reads besides its input (part of its fingerprint): the teacher's."""
        try:
            return {"teacher": resolve_teacher(self.teacher, run_dir, names)}
        except ConfigError:
            return {"teacher": None}


def resolve_teacher(ref: str, run_dir: Path, names: List[str]) -> Path:
    """The teacher's checkpoint folder: an earlier step's final checkpoint (from its ``done.json``),
    a checkpoint folder, or the newest complete checkpoint in a folder of them (or a step's folder)."""
    from nemo_reason.checkpoint import io as ckpt

    if ref in names:
        done = Path(run_dir) / ref / "done.json"
        try:
            path = json.loads(done.read_text()).get("checkpoint")
        except (OSError, ValueError):
            path = None
        if not path:
            raise ConfigError(f"teacher={ref!r}: step '{ref}' has not finished (no checkpoint in {done}); run it "
                              "first, or give teacher=PATH")
        return Path(path)
    path = Path(ref).expanduser()
    if (path / ckpt.MARKER).is_file():
        return path
    for root in (path, path / "checkpoints"):
        if root.is_dir():
            newest = ckpt.find_latest(root)
            if newest is not None:
                return newest
    raise ConfigError(f"teacher={ref!r} is neither a step of this pipeline ({', '.join(names)}) nor a checkpoint "
                      f"folder (no {ckpt.MARKER} in it or in an iter_* folder under it)")


def check_vocabularies(student_vocab: int, teacher_ckpt: Path, teacher_cfg, student_cfg, tp: int, cache_dir) -> None:
    """The logit KL compares the two vocabularies entry by entry: they must be the same."""
    from nemo_reason.checkpoint.meta import load_tokenizer
    from nemo_reason.models.vocab import padded_vocab_size

    t_vocab = load_tokenizer(teacher_ckpt, cache_dir).vocab_size
    if t_vocab != student_vocab:
        raise ConfigError(f"teacher {teacher_ckpt} has a vocabulary of {t_vocab} tokens, the student {student_vocab}: "
                          "the logit KL needs the same tokenizer; distill from a teacher trained with the student's "
                          "tokenizer (data.tokenizer)")
    t_pad = padded_vocab_size(t_vocab, teacher_cfg.model.make_vocab_size_divisible_by, tp)
    s_pad = padded_vocab_size(student_vocab, student_cfg.model.make_vocab_size_divisible_by, tp)
    if t_pad != s_pad:
        raise ConfigError(f"teacher {teacher_ckpt} pads its logits to {t_pad} entries, the student to {s_pad} "
                          "(model.make_vocab_size_divisible_by differs): pad them alike")


@register_step("distill", "knowledge distillation from a frozen teacher checkpoint (logit KL, hidden cosine, LM)",
               config=DistillConfig)
def run(cfg, ctx: StepContext) -> StepResult:
    from nemo_reason.backend.allocator import keep_freed_memory
    from nemo_reason.compress.distill import distill_forward_step
    from nemo_reason.data.loader import build_data
    from nemo_reason.stages.pipeline import step_names
    from nemo_reason.training.accounting import loop_accounting
    from nemo_reason.training.batches import DatasetBatches, dataset_evaluator
    from nemo_reason.training.loop import run_loop
    from nemo_reason.training.state import architecture_from

    keep_freed_memory()  # on CPU: no page faults for each micro-batch's logits (backend/allocator.py)
    step: DistillConfig = ctx.step
    student_ckpt = ctx.require_input()
    teacher_ckpt = resolve_teacher(step.teacher, ctx.run_dir, step_names(cfg))
    data = build_data(cfg, ctx.dims.dp, tokenizer=ctx.tokenizer(cfg))  # the student checkpoint's
    vocab = data.tokenizer.vocab_size
    check_vocabularies(vocab, teacher_ckpt, architecture_from(cfg, teacher_ckpt)[0],
                       architecture_from(cfg, student_ckpt)[0], ctx.dims.tp, cfg.data.cache_dir)

    state, teacher = build_distill_states(cfg, ctx, vocab, step, student_ckpt, teacher_ckpt)
    if ctx.rank == 0:
        print(data.describe(state.step), flush=True)
    describe = (f"distill: KL(T={step.temperature}) x {step.kl_weight}"
                + (f" + hidden cosine x {step.hidden_weight} ({', '.join(step.hidden_layers)})" if step.hidden_weight else "")
                + (f" + LM x {step.lm_weight}" if step.lm_weight else ""))
    result = run_loop(state, ctx, distill_forward_step, DatasetBatches(data.train, state.cfg.trainer, ctx.dims, data),
                      max_steps=state.cfg.trainer.max_steps,
                      evaluate=dataset_evaluator(data.valid, state.cfg.trainer, ctx.dims, distill_forward_step),
                      describe=describe, **loop_accounting(state, ctx, data.tokenizer))
    return StepResult.of(result)


def build_distill_states(cfg, ctx, vocab_size: int, step: DistillConfig, student_ckpt: Optional[Path],
                         teacher_ckpt: Path) -> tuple:
    """``(student TrainState, teacher TrainState)``: the frozen teacher from ``teacher_ckpt``, then
    the student (resumed from this step's checkpoints, else from ``student_ckpt``) converted into the
    distillation wrapper that holds the teacher, before DDP."""
    from nemo_reason.backend import dist as bdist
    from nemo_reason.compress.distill import build_distillation_model, parse_layer_pairs
    from nemo_reason.training.state import build_train_state

    # The teacher first (the student's wrapper holds it); its RNG draws put back, so a resumed run's
    # generator state stays the saved one.
    rng = bdist.get_rng_state()
    teacher = build_train_state(cfg, ctx, vocab_size, init_checkpoint=teacher_ckpt, build_optimizer_state=False)
    bdist.set_rng_state(rng)
    wrapped = []

    def wrap(chunks, resuming: bool):
        student, t = chunks[0], teacher.chunks[0]
        pairs = parse_layer_pairs(step.hidden_layers, student, t) if step.hidden_weight > 0 else []
        model = build_distillation_model(student, t, temperature=step.temperature, hidden_pairs=pairs,
                                         kl_weight=step.kl_weight, hidden_weight=step.hidden_weight,
                                         lm_weight=step.lm_weight)
        # The input checkpoint holds no projection weights; this step's own checkpoints do.
        model._nr_loading_input = not resuming and student_ckpt is not None
        wrapped.append(model)
        return [model]

    state = build_train_state(cfg, ctx, vocab_size, ckpt_root=ctx.step_dir / "checkpoints",
                              init_checkpoint=student_ckpt, prepare_chunks=wrap)
    wrapped[0]._nr_loading_input = False
    state.num_params = sum(p.numel() for p in wrapped[0].parameters() if p.requires_grad)
    tm = teacher.cfg.model
    state.notes.append(f"teacher {teacher_ckpt}: {tm.type}, {tm.num_layers} layers, hidden {tm.hidden_size}, "
                       f"{teacher.num_params:,} params/rank")
    return state, teacher
