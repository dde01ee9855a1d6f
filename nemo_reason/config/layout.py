"""The parallel-layout rules, in one table: ``RunConfig.validate`` and ``nemo-reason plan`` both read it.

Each rule has a short name (what tests and ``plan --json`` key on) and a pure function of the
config and its :class:`Layout` that returns ``None`` when the rule holds, else a message naming
the fields and the fix. ``validate`` raises one :class:`ConfigError` listing every broken rule;
``plan`` (``planner/layout.py``) reports each as a ``Violation``.

    world_tp_cp_pp     world size divisible by TP x CP x PP (the rest is DP)
    heads_tp           attention heads divisible by TP
    groups_tp          query groups (KV heads) divisible by TP
    ffn_tp             MLP inner size divisible by TP
    mamba_groups_tp    Mamba B/C groups divisible by TP      mamba_heads_tp   Mamba heads by TP
    mamba_heads_cp     Mamba heads per TP rank divisible by CP (Megatron's MambaContextParallel)
    mamba_groups_cp    Mamba groups per TP rank and CP: one divides the other
    hybrid_vpp         no interleaved pipeline for hybrids (Megatron's MambaStack)
    layers_pp_vpp      layers divisible by PP x VPP
    seq_cp             sequence divisible by 2 x CP (load-balanced causal chunks)
    seq_sp             sequence per CP rank divisible by TP under sequence parallelism
    seq_max_pos        sequence within model.max_position_embeddings
    batch_dp           global batch divisible by micro batch x DP
    vpp_microbatches   micro-batches a multiple of PP for the interleaved schedule
    ep_without_moe     EP > 1 needs experts
    experts_ep         experts divisible by EP
    world_expert       world size divisible by ETP x EP x PP (the rest is expert DP)
    expert_ffn_etp     expert inner size divisible by ETP
    moe_tp_sp          MoE with TP > 1 needs sequence parallelism
    moe_bias_etp       biased experts need ETP = 1
    fp8                fp8's shape rules (dimensions per TP rank multiple of 16, bf16 layers per stage,
                       first/last bf16 layers need a current-scaling recipe)

The rules that need the world size are skipped while it is unknown (``launcher.nproc_per_node``
and ``gpus_per_node`` both null: one rank per GPU of the machine the ranks run on, filled in by the
launch layer, ``nemo_reason.launch.resolve_launcher``, which validates again). Hardware (CUDA,
Transformer Engine, GPU generation) is not a rule here: it is checked by the preflight
(:mod:`nemo_reason.preflight`) where the job runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

# fp8 GEMMs in Transformer Engine need both matrix dimensions to be multiples of 16.
FP8_ALIGN = 16


@dataclass
class Layout:
    """Sizes of a run on ``world`` ranks. DP and EDP are floored (>= 1) so that an invalid layout
    still gets a memory estimate."""

    world: int
    tp: int
    pp: int
    vpp: Optional[int]
    cp: int
    ep: int
    etp: int
    sequence_parallel: bool
    dp: int
    edp: int
    micro_batches: int


def layout_of(cfg, world: Optional[int] = None) -> Layout:
    p, t = cfg.parallel, cfg.trainer
    world = world or cfg.launcher.world_size
    etp = p.etp or p.tp
    dp = max(1, world // max(1, p.tp * p.cp * p.pp))
    edp = max(1, world // max(1, etp * p.ep * p.pp))
    micro = max(1, t.global_batch_size // max(1, t.micro_batch_size * dp))
    return Layout(world, p.tp, p.pp, p.vpp, p.cp, p.ep, etp, p.sequence_parallel, dp, edp, micro)


@dataclass(frozen=True)
class Rule:
    name: str
    check: Callable  # (cfg, Layout) -> message when broken, else None
    needs_world: bool = False


RULES: List[Rule] = []


def _rule(name: str, needs_world: bool = False):
    def deco(fn):
        RULES.append(Rule(name, fn, needs_world))
        return fn

    return deco


@_rule("world_tp_cp_pp", needs_world=True)
def _world(c, lay):
    p, mp = c.parallel, c.parallel.tp * c.parallel.cp * c.parallel.pp
    if lay.world % mp:
        return (f"world size {lay.world} (launcher.nodes x launcher.nproc_per_node) is not divisible by "
                f"tp x pp x cp = {p.tp} x {p.pp} x {p.cp} = {mp}: {lay.world} GPUs do not divide into tensor x "
                f"context x pipeline parallel groups of {p.tp} x {p.cp} x {p.pp} = {mp}; use a multiple of {mp} "
                "GPUs (launcher.nproc_per_node), or change parallel.tp / cp / pp")


@_rule("heads_tp")
def _heads(c, lay):
    n, tp = c.model.num_attention_heads, c.parallel.tp
    if n % tp:
        return (f"model.num_attention_heads={n} is not divisible by parallel.tp={tp}: {n} attention heads do not "
                f"split evenly over {tp} tensor-parallel ranks; use a tp that divides {n}")


@_rule("groups_tp")
def _groups(c, lay):
    m, tp = c.model, c.parallel.tp
    g = m.num_query_groups or m.num_attention_heads
    if g % tp:
        return (f"model.num_query_groups={g} is not divisible by parallel.tp={tp}: {g} query groups (the KV "
                f"heads) do not split evenly over {tp} tensor-parallel ranks")


@_rule("ffn_tp")
def _ffn(c, lay):
    f, tp = c.model.ffn_hidden_size, c.parallel.tp
    if f % tp:
        return (f"model.ffn_hidden_size={f} is not divisible by parallel.tp={tp}: MLP inner size {f} does not "
                "split evenly over the tensor-parallel ranks")


# Megatron's MambaMixer splits Mamba heads and B/C groups across TP ranks (mamba_mixer.py asserts
# both); a group never straddles two ranks.
@_rule("mamba_groups_tp")
def _mamba_groups(c, lay):
    m, tp = c.model, c.parallel.tp
    if m.type == "hybrid" and m.mamba_num_groups % tp:
        return (f"model.mamba_num_groups={m.mamba_num_groups} is not divisible by parallel.tp={tp}: "
                f"{m.mamba_num_groups} Mamba groups cannot be held whole by each tensor-parallel rank; use a tp "
                "that divides it")


@_rule("mamba_heads_tp")
def _mamba_heads(c, lay):
    m, tp = c.model, c.parallel.tp
    if m.type == "hybrid" and m.mamba_heads % tp:
        return (f"Mamba heads ({m.mamba_heads}) are not divisible by parallel.tp={tp}: {m.mamba_heads} Mamba "
                "heads do not split evenly (model.mamba_num_heads, or 2 x hidden_size / mamba_head_dim)")


def _mamba_per_tp(c) -> Optional[Tuple[int, int]]:
    """Mamba heads and groups per TP rank, when context parallelism splits them further."""
    m, p = c.model, c.parallel
    if m.type != "hybrid" or p.cp == 1 or m.mamba_heads % p.tp or m.mamba_num_groups % p.tp:
        return None
    return m.mamba_heads // p.tp, m.mamba_num_groups // p.tp


# Megatron's MambaContextParallel: each CP rank scans whole sequences for 1/cp of its TP rank's
# heads, whose B/C groups it holds whole or shares (a group replicated).
@_rule("mamba_heads_cp")
def _mamba_heads_cp(c, lay):
    per = _mamba_per_tp(c)
    if per and per[0] % c.parallel.cp:
        return (f"Mamba heads per tensor-parallel rank ({per[0]}) are not divisible by parallel.cp={c.parallel.cp}: "
                "context parallelism gives each CP rank 1/cp of them; change parallel.cp or parallel.tp")


@_rule("mamba_groups_cp")
def _mamba_groups_cp(c, lay):
    per, cp = _mamba_per_tp(c), c.parallel.cp
    if per and not (per[1] % cp == 0 if per[1] >= cp else cp % per[1] == 0):
        return (f"Mamba groups per tensor-parallel rank ({per[1]}) and parallel.cp={cp}: one must divide the "
                "other (Megatron's MambaContextParallel); change parallel.cp or model.mamba_num_groups")


@_rule("hybrid_vpp")
def _hybrid_vpp(c, lay):
    if c.model.type == "hybrid" and c.parallel.vpp is not None:
        return ("parallel.vpp: Megatron's MambaStack has no interleaved pipeline schedule; use parallel.vpp=null "
                "for model.type=hybrid")


@_rule("layers_pp_vpp")
def _layers(c, lay):
    m, p = c.model, c.parallel
    stages = p.pp * (p.vpp or 1)
    if m.num_layers % stages:
        return (f"model.num_layers={m.num_layers} is not divisible by pp x vpp = {stages}: {m.num_layers} layers "
                f"do not split evenly into pipeline x virtual stages = {p.pp} x {p.vpp or 1}; change parallel.pp "
                "or parallel.vpp")


@_rule("seq_cp")
def _seq_cp(c, lay):
    s, cp = c.trainer.seq_length, c.parallel.cp
    if cp > 1 and s % (2 * cp):
        return (f"trainer.seq_length={s} is not divisible by 2 x cp = {2 * cp} (2 x context parallel size = "
                f"{2 * cp}): context parallelism gives each CP rank two of 2 x cp equal sequence chunks; use a "
                f"multiple of {2 * cp}")


@_rule("seq_sp")
def _seq_sp(c, lay):
    p = c.parallel
    local = c.trainer.seq_length // max(1, p.cp)
    if p.sequence_parallel and local % p.tp:
        return (f"trainer.seq_length / cp = {local} is not divisible by parallel.tp={p.tp}: sequence "
                f"parallelism splits the {local} tokens per context-parallel rank over the tensor-parallel "
                "ranks; use a sequence length that divides evenly")


@_rule("seq_max_pos")
def _seq_pos(c, lay):
    s, n = c.trainer.seq_length, c.model.max_position_embeddings
    if s > n:
        return f"trainer.seq_length={s} exceeds model.max_position_embeddings={n}: shorten the sequence or raise it"


@_rule("batch_dp", needs_world=True)
def _batch(c, lay):
    t = c.trainer
    unit = t.micro_batch_size * lay.dp
    if t.global_batch_size % unit:
        return (f"trainer.global_batch_size={t.global_batch_size} is not divisible by micro_batch_size x "
                f"data-parallel size = {t.micro_batch_size} x {lay.dp}: global batch {t.global_batch_size} is not "
                f"a multiple of {unit}; use a multiple of {unit}")


@_rule("vpp_microbatches", needs_world=True)
def _vpp_micro(c, lay):
    p, t = c.parallel, c.trainer
    if p.vpp and p.pp > 1:
        micro = t.global_batch_size // max(1, t.micro_batch_size * lay.dp)
        if micro % p.pp:
            return (f"interleaved pipeline needs the number of micro-batches ({micro}) to be a multiple of "
                    f"parallel.pp={p.pp}: change trainer.global_batch_size or trainer.micro_batch_size")


# MoE Parallel Folding: expert layers use their own layout, ETP x EP x EDP x PP = world, independent
# of the attention layout TP x CP x DP x PP (Megatron's expert groups).
@_rule("ep_without_moe")
def _ep_no_moe(c, lay):
    if not c.model.is_moe and c.parallel.ep != 1:
        return (f"parallel.ep={c.parallel.ep} needs MoE layers: the model has no experts (model.num_moe_experts "
                "is null); set model.num_moe_experts (model.type=moe) or parallel.ep=1")


@_rule("experts_ep")
def _experts(c, lay):
    m, p = c.model, c.parallel
    if m.is_moe and m.num_moe_experts % p.ep:
        return (f"model.num_moe_experts={m.num_moe_experts} is not divisible by parallel.ep={p.ep}: "
                f"{m.num_moe_experts} experts do not split evenly; each expert-parallel rank holds the same "
                "number of whole experts")


@_rule("world_expert", needs_world=True)
def _world_expert(c, lay):
    m, p = c.model, c.parallel
    emp = lay.etp * p.ep * p.pp
    if m.is_moe and lay.world % emp:
        return (f"world size {lay.world} is not divisible by etp x ep x pp = {lay.etp} x {p.ep} x {p.pp} = {emp} "
                "(the expert layers' layout, MoE Parallel Folding); change parallel.ep / parallel.etp or the GPU "
                "count")


@_rule("expert_ffn_etp")
def _expert_ffn(c, lay):
    m = c.model
    ffn = m.moe_ffn_hidden_size or m.ffn_hidden_size
    if m.is_moe and ffn % lay.etp:
        return (f"expert inner size {ffn} (model.moe_ffn_hidden_size) is not divisible by expert tensor parallel "
                f"size {lay.etp} (parallel.etp, null = parallel.tp)")


@_rule("moe_tp_sp")
def _moe_sp(c, lay):
    p = c.parallel
    if c.model.is_moe and p.tp > 1 and not p.sequence_parallel:
        return (f"MoE layers with parallel.tp={p.tp} need parallel.sequence_parallel=true (Megatron's MoELayer "
                "refuses to train tensor-parallel without it)")


@_rule("moe_bias_etp")
def _moe_bias(c, lay):
    if c.model.is_moe and c.model.add_bias_linear and lay.etp > 1:
        return ("model.add_bias_linear=true with MoE needs expert tensor parallel size 1 (parallel.etp=1), as "
                "Megatron requires")


# fp8 (Transformer Engine): shape rules only; whether this machine can run fp8 is the preflight's.
@_rule("fp8")
def _fp8_delayed(c, lay):
    t = c.trainer
    if t.precision == "fp8" and t.fp8_first_last_layers_bf16 and t.fp8_recipe == "delayed":
        return ("trainer.fp8_first_last_layers_bf16=true does not work with trainer.fp8_recipe=delayed "
                "(Transformer Engine's delayed scaling keeps one amax history for all layers); use "
                "trainer.fp8_recipe=tensorwise or blockwise")


@_rule("fp8")
def _fp8_bf16_layers(c, lay):
    t = c.trainer
    if t.precision != "fp8" or not t.fp8_first_last_layers_bf16:
        return None
    per_stage = c.model.num_layers // c.parallel.pp
    for name in ("fp8_num_layers_at_start_in_bf16", "fp8_num_layers_at_end_in_bf16"):
        n = getattr(t, name)
        if n > per_stage:
            return f"trainer.{name}={n} exceeds the layers per pipeline stage ({per_stage})"
    return None


@_rule("fp8")
def _fp8_align(c, lay):
    m, tp = c.model, c.parallel.tp
    if c.trainer.precision != "fp8":
        return None
    for name, size in (("model.hidden_size", m.hidden_size), ("model.ffn_hidden_size", m.ffn_hidden_size)):
        if (size // tp) % FP8_ALIGN:
            return (f"{name}={size} / parallel.tp={tp} is not a multiple of {FP8_ALIGN}: fp8 GEMMs need "
                    "both matrix dimensions divisible by 16; use trainer.precision=bf16 for this model")
    return None


def broken_rules(cfg, world: Optional[int] = None) -> List[Tuple[str, str]]:
    """``(rule name, message)`` for every rule ``cfg`` breaks on ``world`` ranks (default: the
    launcher's; rules that need it are skipped while the launcher leaves it unknown). Assumes the
    parallel sizes are >= 1 (``ParallelConfig.validate``)."""
    known = world is not None or cfg.launcher.world_known
    lay = layout_of(cfg, world)
    out = []
    for rule in RULES:
        if rule.needs_world and not known:
            continue
        msg = rule.check(cfg, lay)
        if msg:
            out.append((rule.name, msg))
    return out


def layout_error(broken: List[Tuple[str, str]]) -> Optional[str]:
    """One message for all broken rules: the rule itself when one, else one line per rule."""
    if not broken:
        return None
    if len(broken) == 1:
        return broken[0][1]
    lines = "\n".join(f"  - [{name}] {msg}" for name, msg in broken)
    return (f"the parallel layout breaks {len(broken)} rules (`nemo-reason plan RECIPE [overrides]` shows them "
            f"with the memory estimate):\n{lines}")
