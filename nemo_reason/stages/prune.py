"""``prune``: Minitron width/depth pruning of the input checkpoint with nvidia-modelopt, checked and saved.

Targets (:mod:`nemo_reason.compress.targets`): explicit sizes (``hidden_size``, ``ffn_hidden_size``,
``num_attention_heads``, ``mamba_num_heads``, ``mamba_head_dim``, ``num_layers``,
``num_moe_experts``, ``moe_ffn_hidden_size``, ``moe_shared_expert_intermediate_size``; unset = keep)
and/or a parameter budget ``params`` that the step turns into sizes of ``budget_fields`` with the
project's parameter counter (the search is documented there). A target the layout cannot hold (heads
not a multiple of the query groups or Mamba groups, sizes not divisible by the largest
tensor-parallel size of the pipeline, ...) exits 2 at composition, naming the legal values; the same
check runs again on the checkpoint's own architecture.

What it does, in order:

1. builds the model the checkpoint records (frozen, as ``perplexity``), measures its validation loss
   on ``eval_batches`` global batches of the validation split, and (``layer_drop_loss``) the
   LM-loss increase on the calibration batches when each layer alone is removed;
2. prunes in place with modelopt's ``mcore_minitron`` (:mod:`nemo_reason.compress.minitron`):
   importance from activations over ``calibration_batches`` global batches of the training split
   of the step's data blend (the last phase's), the same batches on every rank;
3. rebuilds the model at the pruned config with the project's builder (``build_train_state``), and
   checks: every weight shape of the pruned model equals the config's (else it refuses, naming
   the weights and modelopt's divisors), the parameters really shrank (in place = rebuilt = the
   planner's count), the rebuilt model's logits equal the in-place pruned model's within
   ``logit_tolerance``; then measures the pruned model's validation loss;
4. writes ``importance.json`` (per layer: MLP neurons, attention heads, Mamba heads and head dim, MoE
   experts (modelopt's importance, routed tokens, the kept ones) and their neurons,
   layer scores; embedding channels), the table in the log, ``importance.png`` with matplotlib,
   ``metrics.json``, modelopt's own output in ``modelopt.log``, and a self-describing checkpoint
   (``checkpoints/iter_0000000``, its meta.json holding the pruned architecture and the input's
   tokenizer), which the next step and ``nemo-reason eval`` build from with no recipe change.

Left out: TP/PP/CP/EP > 1 while pruning (modelopt's Minitron asserts TP=1; the pruned model then
trains at any layout its sizes allow), modelopt's score-function search over candidates, MoE
layers in a hybrid pattern (E; the GPT-style MoE is tested), distillation (the ``distill`` step
follows this one).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import List, Optional

from nemo_reason.compress.targets import DEFAULT_BUDGET_FIELDS, TARGET_FIELDS, layout_errors
from nemo_reason.config.errors import ConfigError
from nemo_reason.config.steps import StepConfig
from nemo_reason.stages import StepContext, StepResult, register_step


@dataclass
class PruneConfig(StepConfig):
    # Target sizes (Megatron's names); null keeps the size. Heads: multiples of num_query_groups,
    # Mamba heads: multiples of mamba_num_groups (cut equally within each group).
    hidden_size: Optional[int] = None
    ffn_hidden_size: Optional[int] = None
    num_attention_heads: Optional[int] = None
    mamba_num_heads: Optional[int] = None
    mamba_head_dim: Optional[int] = None
    num_layers: Optional[int] = None
    num_moe_experts: Optional[int] = None
    # A MoE model's routed-expert and shared-expert MLP sizes (ffn_hidden_size is the dense MLPs').
    moe_ffn_hidden_size: Optional[int] = None
    moe_shared_expert_intermediate_size: Optional[int] = None
    # Parameter budget (e.g. 4e5, 4e9): sizes of budget_fields chosen so the model has at most this many
    # parameters (explicit targets above stay as given).
    params: Optional[float] = None
    # Dimensions the budget may shrink, filled in this order.
    budget_fields: List[str] = field(default_factory=lambda: list(DEFAULT_BUDGET_FIELDS))
    # The budget search rounds hidden/FFN sizes (and the Mamba head dim) to multiples of this.
    round_to: int = 8
    # Global batches (trainer.global_batch_size x seq_length) of the training split for importance.
    calibration_batches: int = 4
    # Global batches of the validation split for the loss before and after pruning.
    eval_batches: int = 2
    # Also measure each layer's LM-loss increase when dropped (one calibration pass per layer).
    layer_drop_loss: bool = True
    # Largest logit difference allowed between the in-place pruned model and the rebuilt one.
    logit_tolerance: float = 1e-5

    def targets(self) -> dict:
        return {k: getattr(self, k) for k in TARGET_FIELDS if getattr(self, k) is not None}

    def validate(self) -> None:
        where = f"pipeline step '{self.name or self.type}'"
        if not self.targets() and self.params is None:
            raise ConfigError(f"{where}: give target sizes ({', '.join(TARGET_FIELDS)}) or a budget `params`")
        if self.params is not None and self.params <= 0:
            raise ConfigError(f"{where}: params={self.params} must be positive")
        bad = [f for f in self.budget_fields if f not in TARGET_FIELDS]
        if bad:
            raise ConfigError(f"{where}: budget_fields {bad} are not targets; use some of {', '.join(TARGET_FIELDS)}")
        for name in ("calibration_batches", "eval_batches", "round_to"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}: {name}={getattr(self, name)} must be >= 1")

    def check(self, cfg) -> None:
        where = f"step '{self.name or self.type}' (prune)"
        p = cfg.parallel
        if p.tp != 1 or p.pp != 1 or p.cp != 1 or getattr(p, "ep", 1) != 1:
            ones = ", ".join(f"parallel.{k}: 1" for k, v in (("tp", p.tp), ("pp", p.pp), ("cp", p.cp),
                                                              ("ep", getattr(p, "ep", 1))) if v != 1)
            raise ConfigError(f"{where}: pruning runs at parallel.tp=pp=cp=ep=1 (modelopt's Minitron supports "
                              f"TP=1 only), this step has tp={p.tp} pp={p.pp} cp={p.cp} ep={getattr(p, 'ep', 1)}: "
                              f"prune in one process, with overrides: {{{ones}}} on this step (e.g. {{type: prune, "
                              f"..., overrides: {{{ones}}}}}); its checkpoint reshards on load, so the steps after "
                              "it still run at the pipeline's layout")
        if self.params is not None and cfg.model.type == "hybrid" and (
                self.num_layers is not None or "num_layers" in self.budget_fields):
            raise ConfigError(f"{where}: a parameter budget does not choose a hybrid's depth (which layers go is "
                              "known only after calibration): give all sizes explicitly with num_layers, or prune "
                              "depth in a prune step of its own")
        tp, pp = later_layout(cfg)
        errors = layout_errors(cfg.model, self.targets(), tp=tp, pp=pp)
        if errors:
            raise ConfigError(f"{where}: " + "; ".join(errors))


def later_layout(cfg) -> tuple:
    """The largest (tp, pp) any pipeline step runs at: the pruned model must split at those."""
    tp, pp = cfg.parallel.tp, cfg.parallel.pp
    for s in cfg.pipeline or []:
        ov = (s.get("overrides") if isinstance(s, dict) else getattr(s, "overrides", None)) or {}
        tp = max(tp, int(ov.get("parallel.tp", tp) or 1))
        pp = max(pp, int(ov.get("parallel.pp", pp) or 1))
    return tp, pp


@register_step("prune", "Minitron width/depth pruning with nvidia-modelopt (group-aware Mamba heads), checked",
               config=PruneConfig)
def run(cfg, ctx: StepContext) -> StepResult:
    from nemo_reason.backend import dist as bdist
    from nemo_reason.checkpoint import io as ckpt
    from nemo_reason.compress import importance as imp
    from nemo_reason.compress.minitron import apply_minitron, copy_weights, max_logit_diff, shape_mismatches
    from nemo_reason.compress.targets import current_sizes, pruned_config, sizes_for_budget
    from nemo_reason.config.store import to_yaml
    from nemo_reason.models.vocab import padded_vocab_size
    from nemo_reason.planner.params import param_count
    from nemo_reason.training.state import build_frozen_state, build_train_state

    step: PruneConfig = ctx.step
    t_start = time.time()
    say = (lambda msg: print(f"[nemo-reason] prune: {msg}", flush=True)) if ctx.rank == 0 else (lambda msg: None)
    state, tok = build_frozen_state(cfg, ctx)
    model, m = state.chunks[0], state.cfg.model
    padded = padded_vocab_size(tok.vocab_size, m.make_vocab_size_divisible_by, ctx.dims.tp)
    tp, pp = later_layout(cfg)

    # --- targets on the checkpoint's own architecture -------------------------------------------
    sizes = step.targets()
    if step.params is not None:
        try:
            sizes = sizes_for_budget(m, padded, step.params, fixed=sizes, free=step.budget_fields,
                                     round_to=step.round_to, tp=tp)
        except ValueError as exc:
            raise ConfigError(f"step '{ctx.step_name}': {exc}") from None
    errors = layout_errors(m, sizes, tp=tp, pp=pp)
    if errors:
        raise ConfigError(f"step '{ctx.step_name}': the input checkpoint's architecture cannot take the targets: "
                          + "; ".join(errors))
    cur = current_sizes(m)
    export = {k: int(v) for k, v in sizes.items() if v != cur[k]}
    if not export:
        raise ConfigError(f"step '{ctx.step_name}': every target equals the model's size ({sizes}): nothing to prune")

    # --- data: calibration (train split) and validation, the same on every rank ----------------
    cal, evaluate, val_n = _data(state, tok, step, cfg, ctx)
    tokens = [{k: b[k] for k in ("tokens", "position_ids")} for b in cal]

    def forward_loop(mdl):
        for b in tokens:
            mdl(b["tokens"], b["position_ids"], None)

    def cal_loss(mdl, b) -> float:
        per_tok = mdl(b["tokens"], b["position_ids"], None, labels=b["labels"])
        mask = b["loss_mask"].float()
        return float((per_tok.float() * mask).sum() / mask.sum().clamp_min(1))

    params_before = state.num_params
    state.step = 1
    loss_before = evaluate(state)["eval_loss"]
    drop = None
    t0 = time.time()
    if step.layer_drop_loss:
        drop = imp.layer_drop_losses(model, cal, cal_loss)
    t_drop = time.time() - t0
    layer_types = _layer_types(m)

    # --- prune with modelopt ---------------------------------------------------------------------
    t0 = time.time()
    importance = apply_minitron(model, export, forward_loop, ctx.step_dir / "minitron" / f"rank{ctx.rank}",
                                log_path=ctx.step_dir / "modelopt.log" if ctx.rank == 0 else None)
    t_prune = time.time() - t0
    new_m = pruned_config(m, {**cur, **export}, importance.hybrid_pattern)
    new_m.validate()
    params_inplace = sum(p.numel() for p in model.parameters())

    # --- rebuild at the pruned config and check --------------------------------------------------
    new_cfg = dataclasses.replace(state.cfg, model=new_m)
    new_state = build_train_state(new_cfg, ctx, tok.vocab_size)
    rebuilt = new_state.chunks[0]
    divisors = _divisor_note(export)
    mism = shape_mismatches(model, rebuilt)
    if mism:
        raise ConfigError(f"step '{ctx.step_name}': modelopt left {len(mism)} weight(s) at shapes the pruned config "
                          f"does not have ({'; '.join(mism[:6])}{' ...' if len(mism) > 6 else ''}); modelopt ran with "
                          f"{divisors}: a target that is not a multiple of its divisor is silently not pruned")
    if params_inplace >= params_before:
        raise ConfigError(f"step '{ctx.step_name}': modelopt returned {params_inplace:,} parameters, not fewer than "
                          f"the {params_before:,} before, although its config says {export} ({divisors})")
    planned = param_count(new_m, padded)
    if new_state.num_params != params_inplace:
        raise ConfigError(f"step '{ctx.step_name}': the rebuilt model has {new_state.num_params:,} parameters, the "
                          f"pruned one {params_inplace:,}")
    copy_weights(model, rebuilt)
    rebuilt.eval()
    diff = max_logit_diff(model, rebuilt, tokens[:2])
    rebuilt.train()
    if not diff <= step.logit_tolerance:
        raise ConfigError(f"step '{ctx.step_name}': the model rebuilt at the pruned config differs from the pruned "
                          f"model by {diff:.3g} in logits (> logit_tolerance={step.logit_tolerance:g})")
    new_state.step = 1
    loss_after = evaluate(new_state)["eval_loss"]

    # --- report and save -------------------------------------------------------------------------
    report = imp.build_report(m, export, importance, layer_types, drop)
    metrics = {"params_before": params_before, "params_after": new_state.num_params, "params_planned": planned,
               "params_ratio": new_state.num_params / params_before, "val_loss_before": loss_before,
               "val_loss_after": loss_after, "val_tokens": val_n, "targets": export, "sizes": {**cur, **export},
               "hybrid_pattern": new_m.hybrid_pattern if new_m.type == "hybrid" else None,
               "kept_layers": importance.kept_layers, "max_logit_diff": diff, "prune_seconds": t_prune,
               "layer_drop_seconds": t_drop}
    meta = _meta(ctx, cfg, new_m, tok, padded, planned, metrics)
    path = ckpt.save(ctx.step_dir / "checkpoints", 0, 0, new_state.model, new_state.optimizer, new_state.scheduler,
                     to_yaml(new_cfg), bdist.get_rng_state(), meta=meta)
    metrics["seconds"] = time.time() - t_start
    if ctx.rank == 0:
        (ctx.step_dir / "importance.json").write_text(json.dumps(report, indent=1))
        plotted = imp.save_plot(report, ctx.step_dir / "importance.png")
        (ctx.step_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
        print(imp.format_table(report), flush=True)
        arch = ", ".join(f"{k} {cur[k]}->{v}" for k, v in export.items())
        say(f"{arch}" + (f" (pattern {m.hybrid_pattern}->{new_m.hybrid_pattern})" if m.type == "hybrid" else ""))
        say(f"parameters {params_before:,} -> {new_state.num_params:,} ({100 * metrics['params_ratio']:.1f}%); "
            f"validation loss {loss_before:.4f} -> {loss_after:.4f} ({val_n:,} tokens); rebuilt-model logits within "
            f"{diff:.2g}; modelopt {t_prune:.2f} s, layer-drop probe {t_drop:.2f} s, step {metrics['seconds']:.1f} s; "
            f"importance in {ctx.step_dir / 'importance.json'}" + (" and importance.png" if plotted else ""))
    return StepResult(path, metrics)


def _data(state, tok, step: PruneConfig, cfg, ctx):
    """Calibration micro-batches (all ranks the same) and the validation evaluator."""
    from nemo_reason.data.loader import build_datasets, micro_batches, resolve_blend
    from nemo_reason.training.batches import dataset_evaluator
    from nemo_reason.training.losses import lm_forward_step

    t = state.cfg.trainer
    n_cal, n_val = step.calibration_batches * t.global_batch_size, step.eval_batches * t.global_batch_size
    last = state.cfg.data.train_phases()[-1]
    train, valid, _ = build_datasets(state.cfg, [n_cal, n_val, 0], tok, cfg.run.seed,
                                     blend=resolve_blend(last.blend, state.cfg, tok))
    for name, ds, n in (("training", train, n_cal), ("validation", valid, n_val)):
        if ds is None or len(ds) < n:
            raise ConfigError(f"step '{ctx.step_name}': the {name} split holds {0 if ds is None else len(ds)} samples, "
                              f"fewer than the {n} asked (batches x trainer.global_batch_size): lower "
                              f"{'calibration_batches' if name == 'training' else 'eval_batches'} or widen data.split")
    cal = list(micro_batches(train, 0, t.micro_batch_size, 0, 1, total_samples=n_cal))
    evaluate = dataset_evaluator(valid, dataclasses.replace(t, eval_iters=step.eval_batches, eval_every=1), ctx.dims,
                                 lm_forward_step)
    return cal, evaluate, n_val * t.seq_length


def _layer_types(m) -> List[str]:
    if m.type == "hybrid":
        from nemo_reason.models.pattern import allocate

        return list(allocate(m.num_layers, m.hybrid_attention_ratio, m.hybrid_mlp_ratio, m.hybrid_pattern))
    return ["E" if m.is_moe and i % m.moe_layer_freq == 0 else "T" for i in range(m.num_layers)]


def _divisor_note(export: dict) -> str:
    from nemo_reason.compress.minitron import divisors_for

    return ", ".join(f"{k}={v}" for k, v in divisors_for(export).items())


def _meta(ctx, cfg, new_m, tok, padded: int, planned: int, metrics: dict) -> dict:
    """Checkpoint meta: the pruned architecture, the input's tokenizer (its own copy), the pruning."""
    from nemo_reason.checkpoint import meta as cmeta

    rec = dict(cmeta.read_meta(ctx.input_checkpoint).tokenizer or {})
    if rec.get("file"):
        rec["source"] = str(ctx.input_checkpoint / rec["file"])
    elif not rec.get("name"):
        rec = cmeta.tokenizer_record(cfg.data, tok)
    return {"step_type": "prune", "step_name": ctx.step_name, "fingerprint": ctx.fingerprint,
            "model": dataclasses.asdict(new_m), "tokenizer": rec, "params": planned, "padded_vocab_size": padded,
            "tokens": 0, "pruned_from": str(ctx.input_checkpoint),
            "prune": {k: metrics[k] for k in ("targets", "params_before", "params_after", "val_loss_before",
                                              "val_loss_after", "hybrid_pattern", "kept_layers")}}
