"""The run summary: per step its type, status, wall time, parameter count and headline numbers.

Headline numbers come from a registry keyed by step type (:data:`HEADLINES`), each a function
``(step, run) -> [(label, value)]`` over what :func:`~nemo_reason.report.collect.collect_run` read:

- ``pretrain`` / ``sft``: training loss, first logged -> final, and the last held-out (eval) loss;
- ``grpo``: reward per domain, first -> last quarter of the logged steps (each the mean of a
  quarter, so one noisy rollout does not decide it), the last held-out pass@1 per domain
  (``heldout_every``), and the mean response length of the last quarter;
- ``prune``: parameters before -> after and the share removed, validation loss before -> after;
- ``distill``: the KL to the teacher (train, first logged -> final; and the last eval), and the
  **gap to the teacher**: the distilled student's held-out LM loss minus the teacher's, when a
  ``perplexity`` step measures the student (the teacher's loss is the prune step's ``val_loss_before``,
  on the same held-out batches when the perplexity step uses as many as prune's ``eval_batches``);
- ``perplexity``: held-out loss and perplexity; ``eval``: pass@1 per domain (pass@k, maj@k and the
  mean response length per domain are in the page's eval table and the step's ``eval.json``).

A step type without an entry shows its ``loss`` / ``eval_loss`` if it has them. :func:`format_summary`
prints the table the end of ``nemo-reason run`` and ``nemo-reason report`` show; :func:`summary_dict`
is the same as JSON-ready data.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple

from nemo_reason.registry import Registry
from nemo_reason.report.collect import RunInfo, StepInfo

Headline = List[Tuple[str, Any]]
HEADLINES: Registry = Registry("report headline")


def headline(*types: str):
    """Register ``fn(step, run) -> [(label, value)]`` as the headline of these step types."""

    def deco(fn: Callable):
        for t in types:
            HEADLINES.register(t)(fn)
        return fn

    return deco


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def series(step: StepInfo, key: str) -> List[Tuple[int, float]]:
    """``(optimizer step, value)`` of every record of ``step`` that holds a finite ``key``."""
    return [(int(r.get("step", 0) or 0), float(r[key])) for r in step.records if _finite(r.get(key))]


def first_last(values: List[float]) -> Optional[Tuple[float, float]]:
    """Means of the first and of the last quarter (at least one value each)."""
    if not values:
        return None
    q = max(1, len(values) // 4)
    return sum(values[:q]) / q, sum(values[-q:]) / q


def _trend(label: str, values: List[float]) -> Headline:
    fl = first_last(values)
    if fl is None:
        return []
    return [(label, fl[1] if len(values) == 1 else (fl[0], fl[1]))]


def _last(step: StepInfo, key: str) -> Optional[float]:
    s = series(step, key)
    if s:
        return s[-1][1]
    v = step.metrics.get(key)
    return float(v) if _finite(v) else None


def domains_of(step: StepInfo, prefix: str) -> List[str]:
    """Domains ``d`` with records ``<prefix>/<d>`` (e.g. ``reward/math``), in first-seen order."""
    seen: Dict[str, None] = {}
    for r in step.records:
        for k in r:
            if k.startswith(prefix + "/") and k.count("/") == 1:
                seen.setdefault(k.split("/", 1)[1], None)
    return list(seen)


def heldout_domains(step: StepInfo) -> List[str]:
    seen: Dict[str, None] = {}
    for r in step.records:
        for k in r:
            if k.startswith("heldout/") and k.endswith("/pass@1"):
                seen.setdefault(k.split("/")[1], None)
    return list(seen)


@headline("pretrain", "sft")
def _training(step: StepInfo, run: RunInfo) -> Headline:
    losses = [v for _, v in series(step, "loss")]
    out: Headline = [("loss", losses[0] if len(losses) == 1 else (losses[0], losses[-1]))] if losses else []
    if not out and _finite(step.metrics.get("loss")):
        out = [("loss", step.metrics["loss"])]
    ev = _last(step, "eval_loss")
    if ev is not None:
        out.append(("eval loss", ev))
    phases = list(dict.fromkeys(r["phase"] for r in step.records if r.get("phase")))
    if len(phases) > 1:
        out.append(("phases", " -> ".join(phases)))
    return out


@headline("grpo")
def _grpo(step: StepInfo, run: RunInfo) -> Headline:
    out: Headline = []
    doms = domains_of(step, "reward")
    for d in doms:
        out += _trend(f"reward {d}", [v for _, v in series(step, f"reward/{d}")])
    if not doms:
        out += _trend("reward", [v for _, v in series(step, "reward")])
    for d in heldout_domains(step):
        v = _last(step, f"heldout/{d}/pass@1")
        if v is not None:
            out.append((f"held-out {d} pass@1", v))
    lengths = [v for _, v in series(step, "response_length")]
    if lengths:
        q = max(1, len(lengths) // 4)
        out.append(("response length", f"{sum(lengths[-q:]) / q:.1f}"))
    return out


@headline("prune")
def _prune(step: StepInfo, run: RunInfo) -> Headline:
    m = step.metrics
    out: Headline = []
    before, after = m.get("params_before"), m.get("params_after")
    if _finite(before) and _finite(after):
        out.append(("params", (int(before), int(after))))
        out.append(("removed", f"{int(before) - int(after):,} ({100 * (1 - after / before):.1f}%)"))
    if _finite(m.get("val_loss_before")) and _finite(m.get("val_loss_after")):
        out.append(("val loss", (m["val_loss_before"], m["val_loss_after"])))
    return out


@headline("distill")
def _distill(step: StepInfo, run: RunInfo) -> Headline:
    key = "kd_loss" if series(step, "kd_loss") else "distill_loss"
    kl = [v for _, v in series(step, key)]
    out: Headline = [("KL to teacher", kl[0] if len(kl) == 1 else (kl[0], kl[-1]))] if kl else []
    ev = _last(step, "eval_" + key)
    if ev is not None:
        out.append(("eval KL", ev))
    lm = _last(step, "loss")
    if lm is not None:
        out.append(("loss", lm))
    comp = compression(run)
    if comp and comp.get("distill") == step.name and _finite(comp.get("gap")):
        out.append(("gap to teacher", comp["gap"]))
    return out


@headline("perplexity")
def _perplexity(step: StepInfo, run: RunInfo) -> Headline:
    m = step.metrics
    return [(k, m[k]) for k in ("loss", "perplexity") if _finite(m.get(k))]


@headline("eval")
def _eval(step: StepInfo, run: RunInfo) -> Headline:
    out: Headline = []
    for d, r in (step.eval.get("domains") or {}).items():
        out.append((f"{d} pass@1", r.get("pass@1")))
    if not out:  # no eval.json (yet): the step's metrics
        for k, v in step.metrics.items():
            if k.endswith("/pass@1"):
                out.append((k.replace("/", " "), v))
    return out


def _generic(step: StepInfo, run: RunInfo) -> Headline:
    return [(k.replace("_", " "), v) for k in ("loss", "eval_loss") for v in [_last(step, k)] if v is not None]


def headlines(step: StepInfo, run: RunInfo) -> Headline:
    """The headline numbers of one step (empty for a step not started)."""
    if step.status == "pending":
        return []
    fn = HEADLINES.get(step.type) if step.type in HEADLINES else _generic
    return fn(step, run)


def compression(run: RunInfo) -> Optional[Dict[str, Any]]:
    """Teacher vs pruned vs distilled: held-out loss and parameters, from the first ``prune`` step,
    the first ``distill`` step after it and the first ``perplexity`` step after that; None without
    a prune or distill step that has started."""
    steps = run.steps
    prune = next((s for s in steps if s.type == "prune" and s.status != "pending"), None)
    start = prune.index if prune else 0
    distill = next((s for s in steps if s.type == "distill" and s.index > start and s.status != "pending"), None)
    if prune is None and distill is None:
        return None
    out: Dict[str, Any] = {"prune": prune.name if prune else None, "distill": distill.name if distill else None}
    if prune is not None:
        m = prune.metrics
        out["teacher"] = {"loss": m.get("val_loss_before"), "params": m.get("params_before")}
        out["pruned"] = {"loss": m.get("val_loss_after"), "params": m.get("params_after")}
    if distill is not None:
        measured = next((s for s in steps if s.type == "perplexity" and s.index > distill.index
                         and s.status == "done"), None)
        out["distilled"] = {"loss": measured.metrics.get("loss") if measured else None,
                            "params": distill.params, "measured_by": measured.name if measured else None}
        teacher_loss = (out.get("teacher") or {}).get("loss")
        if _finite(teacher_loss) and _finite(out["distilled"]["loss"]):
            out["gap"] = out["distilled"]["loss"] - teacher_loss
    return out


def fmt_value(v: Any) -> str:
    if isinstance(v, tuple) and len(v) == 2:
        return f"{fmt_value(v[0])} -> {fmt_value(v[1])}"
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if 0 < abs(v) < 1e-3:
            return f"{v:.2e}"
        return f"{v:.2f}" if abs(v) >= 100 else f"{v:.3f}"
    return str(v)


def fmt_seconds(s: Optional[float]) -> str:
    """``0.4s``, ``34s``, ``2m05s``, ``1h02m00s``."""
    from nemo_reason.training.metrics import fmt_duration

    if s is None:
        return "-"
    return f"{s:.1f}s" if s < 9.95 else fmt_duration(s)


def fmt_headline(items: Headline) -> str:
    return ", ".join(f"{label} {fmt_value(v)}" for label, v in items)


def progress(step: StepInfo) -> str:
    """``12/20`` for a training step that has logged, else ""."""
    if step.records and step.max_steps and step.status != "done":
        return f"{step.step}/{step.max_steps}"
    return ""


def summary_dict(run: RunInfo) -> Dict[str, Any]:
    """The summary as plain data (``nemo-reason report --json``)."""
    def plain(v):
        return list(v) if isinstance(v, tuple) else v

    return {"run_dir": str(run.run_dir), "name": run.name, "status": run.status, "steps_done": run.done,
            "steps": len(run.steps), "seconds": run.seconds, "compression": compression(run),
            "pipeline": [{"index": s.index, "name": s.name, "type": s.type, "status": s.status, "seconds": s.seconds,
                          "params": s.params, "model": s.model, "step": s.step, "max_steps": s.max_steps,
                          "checkpoint": s.checkpoint,
                          "headline": {label: plain(v) for label, v in headlines(s, run)}} for s in run.steps]}


def format_summary(run: RunInfo) -> str:
    """The summary table: one row per step, then the total."""
    rows = [("#", "step", "type", "status", "time", "params", "headline")]
    for s in run.steps:
        status = s.status + (f" {progress(s)}" if progress(s) else "")
        rows.append((str(s.index), s.name, s.type, status, fmt_seconds(s.seconds),
                     "-" if s.params is None else f"{s.params:,}", fmt_headline(headlines(s, run)) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  " + "  ".join(c.ljust(w) if i != 5 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             + "  " + r[-1] for r in rows]
    lines.insert(1, "  " + "  ".join("-" * w for w in widths) + "  " + "-" * 8)
    head = (f"run {run.name} ({run.run_dir}): {run.done}/{len(run.steps)} steps done, "
            f"{fmt_seconds(run.seconds)} of step time")
    return "\n".join([head, *lines])
