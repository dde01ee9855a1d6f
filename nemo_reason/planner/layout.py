"""Layout checks for a planned run: every parallelism rule, all violations at once, in plain words.

``RunConfig.validate`` stops at the first broken rule (what ``run`` wants: fail fast). The planner
wants the whole list, so it re-states the cross-group rules here, each with a short name
(``Violation.rule``) that tests and ``--json`` consumers can key on:

    world_tp_cp_pp     world size divisible by TP x CP x PP (the rest is DP)
    world_expert       world size divisible by ETP x EP x PP (the rest is expert DP)
    heads_tp           attention heads divisible by TP
    groups_tp          query groups (KV heads) divisible by TP
    ffn_tp             MLP inner size divisible by TP
    mamba_groups_tp    Mamba B/C groups divisible by TP      mamba_heads_tp   Mamba heads by TP
    hybrid_vpp         no interleaved pipeline for hybrids (Megatron's MambaStack)
    layers_pp_vpp      layers divisible by PP x VPP
    seq_cp             sequence divisible by 2 x CP (load-balanced causal chunks)
    seq_sp             sequence per CP rank divisible by TP under sequence parallelism
    seq_max_pos        sequence within model.max_position_embeddings
    batch_dp           global batch divisible by micro batch x DP
    vpp_microbatches   micro-batches a multiple of PP for the interleaved schedule
    ep_without_moe     EP > 1 needs experts
    experts_ep         experts divisible by EP
    expert_ffn_etp     expert inner size divisible by ETP
    moe_tp_sp          MoE with TP > 1 needs sequence parallelism
    moe_bias_etp       biased experts need ETP = 1
    fp8                fp8's shape rules (dimensions per TP rank multiple of 16, bf16 layers per stage)
    parallel           a parallel.* value that is wrong by itself (sizes < 1, vpp without pp, ...)
    config             any other rule RunConfig.validate enforces (a safety net: plan never
                       calls valid what `run` would refuse)

Hardware (CUDA, Transformer Engine, GPU generation) is not checked: a plan is for the cluster,
not for the machine it is typed on.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import List, Optional

from nemo_reason.config.schema import ConfigError


@dataclass
class Violation:
    rule: str
    message: str


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


def check_layout(cfg, world: Optional[int] = None) -> List[Violation]:
    """Every broken layout rule of ``cfg`` on ``world`` ranks (default: the launcher's)."""
    m, p, t = cfg.model, cfg.parallel, cfg.trainer
    lay = layout_of(cfg, world)
    out: List[Violation] = []

    def need(cond: bool, rule: str, message: str) -> None:
        if not cond:
            out.append(Violation(rule, message))

    try:
        p.validate()
    except ConfigError as err:
        out.append(Violation("parallel", str(err)))
        if min(p.tp, p.pp, p.cp, p.ep, p.etp or 1, p.vpp or 1) < 1:
            return out  # sizes below 1: nothing else can be computed
    world = lay.world
    mp = p.tp * p.cp * p.pp
    need(world % mp == 0, "world_tp_cp_pp",
         f"{world} GPUs do not divide into tensor x context x pipeline parallel groups of {p.tp} x {p.cp} x {p.pp}"
         f" = {mp}: use a multiple of {mp} GPUs, or change parallel.tp / cp / pp")
    groups = m.num_query_groups or m.num_attention_heads
    need(m.num_attention_heads % p.tp == 0, "heads_tp",
         f"{m.num_attention_heads} attention heads (model.num_attention_heads) do not split evenly over "
         f"parallel.tp={p.tp} tensor-parallel ranks")
    need(groups % p.tp == 0, "groups_tp",
         f"{groups} query groups (model.num_query_groups, the KV heads) do not split evenly over parallel.tp={p.tp}")
    need(m.ffn_hidden_size % p.tp == 0, "ffn_tp",
         f"MLP inner size {m.ffn_hidden_size} (model.ffn_hidden_size) does not split evenly over parallel.tp={p.tp}")
    if m.type == "hybrid":
        need(m.mamba_num_groups % p.tp == 0, "mamba_groups_tp",
             f"{m.mamba_num_groups} Mamba groups (model.mamba_num_groups) do not split evenly over "
             f"parallel.tp={p.tp}: each tensor-parallel rank holds whole groups")
        need(m.mamba_heads % p.tp == 0, "mamba_heads_tp",
             f"{m.mamba_heads} Mamba heads do not split evenly over parallel.tp={p.tp}")
        need(p.vpp is None, "hybrid_vpp",
             "Megatron's Mamba stack has no interleaved pipeline schedule: set parallel.vpp=null for a hybrid model")
    stages = p.pp * (p.vpp or 1)
    need(m.num_layers % stages == 0, "layers_pp_vpp",
         f"{m.num_layers} layers (model.num_layers) do not split evenly into pipeline x virtual stages = "
         f"{p.pp} x {p.vpp or 1} = {stages}")
    need(p.cp == 1 or t.seq_length % (2 * p.cp) == 0, "seq_cp",
         f"sequence length {t.seq_length} is not divisible by 2 x context parallel size = {2 * p.cp} "
         "(context parallelism cuts each sequence into 2 x cp chunks)")
    local_seq = t.seq_length // max(1, p.cp)
    need(not p.sequence_parallel or local_seq % p.tp == 0, "seq_sp",
         f"sequence parallelism splits the {local_seq} tokens per context-parallel rank over parallel.tp={p.tp} "
         "ranks: use a sequence length that divides evenly")
    need(t.seq_length <= m.max_position_embeddings, "seq_max_pos",
         f"sequence length {t.seq_length} exceeds model.max_position_embeddings={m.max_position_embeddings}")
    dp = world // mp if world % mp == 0 else lay.dp
    need(t.global_batch_size % (t.micro_batch_size * dp) == 0, "batch_dp",
         f"global batch {t.global_batch_size} is not a multiple of micro batch x data-parallel size = "
         f"{t.micro_batch_size} x {dp} = {t.micro_batch_size * dp}")
    if p.vpp and p.pp > 1:
        micro = t.global_batch_size // max(1, t.micro_batch_size * dp)
        need(micro % p.pp == 0, "vpp_microbatches",
             f"the interleaved pipeline needs the number of micro-batches per step ({micro}) to be a multiple "
             f"of parallel.pp={p.pp}")
    out += _expert_rules(m, p, world)
    if t.precision == "fp8":
        from nemo_reason.backend.fp8 import _check_config_rules

        try:
            _check_config_rules(t, m, p)
        except ConfigError as err:
            out.append(Violation("fp8", str(err)))
    if not out:
        out += _safety_net(cfg, world)
    return out


def _expert_rules(m, p, world: int) -> List[Violation]:
    out: List[Violation] = []
    if not m.is_moe:
        if p.ep != 1:
            out.append(Violation("ep_without_moe", f"parallel.ep={p.ep} splits experts, but the model has none "
                                 "(model.num_moe_experts is null): use parallel.ep=1"))
        return out
    etp = p.etp or p.tp
    if m.num_moe_experts % p.ep:
        out.append(Violation("experts_ep", f"{m.num_moe_experts} experts (model.num_moe_experts) do not split evenly "
                             f"over parallel.ep={p.ep} expert-parallel ranks"))
    emp = etp * p.ep * p.pp
    if world % emp:
        out.append(Violation("world_expert", f"{world} GPUs do not divide into the expert layers' groups of expert "
                             f"tensor x expert x pipeline parallel = {etp} x {p.ep} x {p.pp} = {emp} "
                             "(MoE Parallel Folding): change parallel.ep / parallel.etp or the GPU count"))
    ffn = m.moe_ffn_hidden_size or m.ffn_hidden_size
    if ffn % etp:
        out.append(Violation("expert_ffn_etp", f"expert inner size {ffn} (model.moe_ffn_hidden_size) does not split "
                             f"evenly over expert tensor parallel size {etp} (parallel.etp; null = parallel.tp)"))
    if p.tp > 1 and not p.sequence_parallel:
        out.append(Violation("moe_tp_sp", f"MoE layers with parallel.tp={p.tp} need parallel.sequence_parallel=true "
                             "(Megatron's MoE layer refuses tensor parallelism without it)"))
    if m.add_bias_linear and etp > 1:
        out.append(Violation("moe_bias_etp", "experts with biases (model.add_bias_linear=true) need expert tensor "
                             "parallel size 1 (parallel.etp=1), as Megatron requires"))
    return out


def _safety_net(cfg, world: int) -> List[Violation]:
    """Whatever else ``RunConfig.validate`` refuses, on ``world`` ranks, without hardware checks."""
    c = copy.deepcopy(cfg)
    l = c.launcher
    nproc = l.nproc_per_node or l.gpus_per_node or 1
    if world % nproc == 0:
        l.nodes = world // nproc
    else:
        l.nodes, l.nproc_per_node = 1, world
    if c.trainer.precision in ("fp16", "fp8"):
        c.trainer.precision = "bf16"  # the precision's own rules ran above; CUDA is the cluster's business
    try:
        c.validate()
    except ConfigError as err:
        return [Violation("config", str(err))]
    return []
