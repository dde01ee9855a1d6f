"""``nemo-reason plan``: one report of a run's layout, size, FLOPs, memory and (given a step time) MFU.

:func:`plan` returns a plain dict (what ``--json`` prints); :func:`format_report` renders it as
aligned text. Nothing here imports torch or Megatron: a plan answers in about a second.

Conventions: parameters and FLOPs count the padded vocabulary (as Megatron-LM does); memory is in
GiB (2^30 bytes, as ``nvidia-smi`` and PyTorch report it) on the most loaded GPU; MFU is model
FLOPs per step / (step time x GPUs x peak), the peak defaulting to an H100's dense bf16 989.4 TFLOP/s.
A pipeline's ``prune`` steps add the shape each prunes to and its parameters
(:mod:`nemo_reason.planner.compress`).
"""

from __future__ import annotations

from typing import Optional

from nemo_reason.config.schema import ConfigError
from nemo_reason.models.vocab import padded_vocab_size
from nemo_reason.planner.compress import format_prune, prune_plans
from nemo_reason.planner.flops import flops_per_step_from_config
from nemo_reason.planner.layout import check_layout, layout_of
from nemo_reason.planner.memory import memory_report
from nemo_reason.planner.params import param_breakdown

H100_BF16_TFLOPS = 989.4  # the same default as nemo_reason.backend.peak (not imported: it would import torch)


# The same padding as the model builders (pure Python, no torch).
padded_vocab = padded_vocab_size


def vocab_of(cfg) -> int:
    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    try:
        from nemo_reason.data.vocab import vocab_size_of

        return vocab_size_of(cfg.data.tokenizer, cfg.data.tokenizer_path, cfg.data.cache_dir)
    except Exception as err:  # noqa: BLE001 - any failure: ask for the size instead
        raise ConfigError(f"cannot size the vocabulary from data.tokenizer={cfg.data.tokenizer!r} ({err}); "
                          "set model.vocab_size") from None


def plan(cfg, world: Optional[int] = None, step_time: Optional[float] = None, peak_tflops: Optional[float] = None,
         recompute: str = "selective", gpu_memory_gb: float = 80.0) -> dict:
    """The whole report for ``cfg`` on ``world`` GPUs (default: launcher.nodes x nproc_per_node)."""
    m, t, p = cfg.model, cfg.trainer, cfg.parallel
    for name in ("tp", "pp", "cp", "ep", "etp", "vpp"):  # sizes below 1 leave nothing to plan
        value = getattr(p, name)
        if value is not None and value < 1:
            raise ConfigError(f"parallel.{name}={value}: sizes must be >= 1")
    if world is not None and world < 1:
        raise ConfigError(f"{world} GPUs: plan for at least 1")
    lay = layout_of(cfg, world)
    errors = check_layout(cfg, lay.world)
    vocab = vocab_of(cfg)
    padded = padded_vocab(vocab, m.make_vocab_size_divisible_by, lay.tp)
    total = param_breakdown(m, padded)
    active = param_breakdown(m, padded, active=True)
    tokens = t.global_batch_size * t.seq_length
    flops_step = flops_per_step_from_config(cfg, padded)
    mem = memory_report(cfg, lay, padded, recompute)
    warnings = []
    if mem["total"] > gpu_memory_gb:
        fixes = [] if cfg.optim.distributed or lay.dp * lay.cp == 1 else ["the distributed optimizer"]
        fixes += ["more GPUs (data parallel shards the distributed optimizer)" if cfg.optim.distributed else None,
                  "more tensor / pipeline" + (" / expert" if m.is_moe else "") + " parallelism",
                  "activation recomputation" if recompute != "full" else None]
        warnings.append(f"the most loaded GPU needs about {mem['total']:.1f} GiB, more than {gpu_memory_gb:g}: "
                        f"try {', '.join(f for f in fixes if f)}")
    report = {
        "recipe": cfg.run.name,
        "valid": not errors,
        "errors": [{"rule": v.rule, "message": v.message} for v in errors],
        "warnings": warnings,
        "gpus": lay.world,
        "layout": {"tp": lay.tp, "pp": lay.pp, "vpp": lay.vpp, "cp": lay.cp, "dp": lay.dp, "ep": lay.ep,
                   "etp": lay.etp, "edp": lay.edp, "sequence_parallel": lay.sequence_parallel,
                   "micro_batch_size": t.micro_batch_size, "global_batch_size": t.global_batch_size,
                   "micro_batches": lay.micro_batches, "seq_length": t.seq_length, "precision": t.precision},
        "model_type": m.type,
        "vocab_size": vocab,
        "padded_vocab_size": padded,
        "params_total": sum(total.values()),
        "params_active": sum(active.values()),
        "params_breakdown": total,
        "params_active_breakdown": active,
        "tokens_per_step": tokens,
        "flops_per_step": flops_step,
        "flops_per_token": flops_step / tokens,
        "memory_gb": mem,
        "gpu_memory_gb": gpu_memory_gb,
        "prune": prune_plans(cfg, padded),
    }
    if step_time:
        peak = peak_tflops or t.peak_tflops or H100_BF16_TFLOPS
        achieved = flops_step / step_time / lay.world / 1e12
        report["mfu"] = {"step_time_s": step_time, "peak_tflops": peak,
                         "model_tflops_per_s_per_gpu": achieved, "mfu": achieved / peak,
                         "tokens_per_s": tokens / step_time}
    return report


def _b(n: float) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def _flop(x: float) -> str:
    for unit, div in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if x >= div:
            return f"{x / div:.1f} {unit}"
    return f"{x:.0f} FLOP"


def format_report(r: dict) -> str:
    """The report as aligned, readable text."""
    lay, mem = r["layout"], r["memory_gb"]
    moe = r["params_total"] != r["params_active"]
    n = len(r["errors"])
    out = [f"plan: {r['recipe']} ({r['model_type']}) on {r['gpus']} GPU{'s' if r['gpus'] > 1 else ''}  ->  "
           + ("valid" if r["valid"] else f"INVALID ({n} problem{'s' if n > 1 else ''})")]
    out += [f"  x {e['message']}  [{e['rule']}]" for e in r["errors"]]
    out += [f"  ! {w}" for w in r["warnings"]]

    def section(title: str, rows) -> None:
        out.append(title)
        out.extend(f"  {label:<32} {value}" for label, value in rows if value is not None)

    vpp = f" (VPP {lay['vpp']})" if lay["vpp"] else ""
    section("layout", [
        ("attention: TP x CP x PP x DP", f"{lay['tp']} x {lay['cp']} x {lay['pp']}{vpp} x {lay['dp']}"
         + ("  sequence parallel" if lay["sequence_parallel"] else "")),
        ("experts: ETP x EP x PP x EDP", f"{lay['etp']} x {lay['ep']} x {lay['pp']} x {lay['edp']}" if moe else None),
        ("batch", f"{lay['global_batch_size']} x {lay['seq_length']} tokens, {lay['micro_batches']} micro-batches "
                  f"of {lay['micro_batch_size']} per DP rank, {lay['precision']}"),
    ])
    section("model", [
        ("parameters, total", _b(r["params_total"])),
        ("parameters, active per token", _b(r["params_active"]) if moe else None),
        ("  by part", ", ".join(f"{k} {_b(v)}" for k, v in r["params_breakdown"].items() if v)),
        ("vocabulary (padded)", f"{r['vocab_size']} ({r['padded_vocab_size']})"),
        ("model FLOPs per token", f"{_flop(r['flops_per_token'])} (forward + backward)"),
        ("model FLOPs per step", _flop(r["flops_per_step"])),
    ])
    a, s = mem["activations_by_recompute"], mem["fp8_savings"]
    opt = "distributed" if mem["distributed_optimizer"] else "replicated"
    section(f"memory per GPU, GiB (most loaded rank, recompute={mem['recompute']})", [
        ("weights", f"{mem['weights']:6.1f}"),
        ("gradients (fp32)", f"{mem['gradients']:6.1f}"),
        ("optimizer states", f"{mem['optimizer']:6.1f}  ({opt}; replicated {mem['optimizer_replicated']:.1f}, "
                             f"distributed {mem['optimizer_distributed']:.1f})"),
        ("activations", f"{mem['activations']:6.1f}  (no recompute {a['none']:.1f}, selective {a['selective']:.1f}, "
                        f"full {a['full']:.1f})"),
        ("total", f"{mem['total']:6.1f}  of {r['gpu_memory_gb']:g}"),
        ("fp8 would save", f"{s['activations']:6.1f}  activations; weights {s['weights_with_fp8_param_gather']:.1f} "
                           "more with trainer.fp8_param_gather"
         if s["activations"] or s["weights_with_fp8_param_gather"] else None),
    ])
    for p in r.get("prune", []):
        section(f"prune step '{p['name']}'", format_prune(p))
    if "mfu" in r:
        f = r["mfu"]
        section("throughput", [
            ("step time", f"{f['step_time_s']:g} s ({f['tokens_per_s']:,.0f} tokens/s)"),
            ("model TFLOP/s per GPU", f"{f['model_tflops_per_s_per_gpu']:.1f} of {f['peak_tflops']:g} peak"),
            ("MFU", f"{100 * f['mfu']:.1f}%"),
        ])
    return "\n".join(out)
