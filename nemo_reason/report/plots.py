"""The report's plots, drawn with matplotlib's Agg canvas (no display, no pyplot state) into PNG bytes.

:func:`build_plots` returns the plots a run's records support, each a :class:`Plot` with a title (drawn
in the image and shown above it on the page), in this order; a plot whose data no step has yet is
left out:

- ``time``: wall time per step (bars coloured by status);
- ``loss``: one panel per training step: training loss and held-out (eval) loss over its optimizer
  steps (a ``distill`` step's are its KL to the teacher; a ``grpo`` step's policy loss is not drawn);
- ``lr``: the learning rate of every training step on one pipeline-wide axis (each step's optimizer
  steps follow the previous step's, each step its colour);
- ``reward``: GRPO reward per domain, every ``grpo`` step on one axis (AceReason's math -> code
  stages side by side, with the stage boundaries marked);
- ``accuracy``: held-out accuracy per domain: pass@1 of every ``eval`` step and the last held-out
  pass@1 of every ``grpo`` step that measured one (bars), and beside them the held-out pass@1 over the
  GRPO steps (``heldout_every``);
- ``response_length``: GRPO mean and longest response per step, with each stage's ``max_new_tokens``;
- ``compression``: teacher vs pruned vs distilled: held-out loss and parameters
  (:func:`~nemo_reason.report.summary.compression`);
- ``importance``: the prune step's own layer-importance plot (``importance.png``), passed through.

Left out: interactive plots (the page stays one self-contained file), TensorBoard's event files
(``metrics.jsonl`` holds the same numbers).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from nemo_reason.report.collect import RunInfo, StepInfo
from nemo_reason.report.summary import compression, domains_of, heldout_domains, series

STATUS_COLORS = {"done": "#2e7d32", "running": "#f9a825", "stopped": "#c62828", "pending": "#9e9e9e"}
DPI = 100


@dataclass
class Plot:
    name: str  # file stem: <run.dir>/report/<name>.png
    title: str
    png: bytes
    caption: str = ""


def _colors():
    from matplotlib import colormaps

    return colormaps["tab10"].colors


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _step_color(step: StepInfo):
    c = _colors()
    return c[(step.index - 1) % len(c)]


def _loss_keys(step: StepInfo):
    """(train key, eval key, label) of a step's loss curve, or None (grpo: its policy loss says little)."""
    if step.type == "grpo":
        return None
    if step.type == "distill":
        key = "kd_loss" if series(step, "kd_loss") else "distill_loss"
        return key, "eval_" + key, "KL to teacher"
    if series(step, "loss") or series(step, "eval_loss"):
        return "loss", "eval_loss", "loss"
    return None


def plot_time(run: RunInfo) -> Optional[Plot]:
    steps = [s for s in run.steps if s.seconds is not None or s.status == "pending"]
    if not any(s.seconds for s in steps):
        return None
    title = "Wall time per step"
    fig = _figure(6.5, 0.3 * len(run.steps) + 1.1)
    ax = fig.add_subplot()
    names = [f"{s.index}. {s.name}" for s in run.steps][::-1]
    secs = [s.seconds or 0.0 for s in run.steps][::-1]
    cols = [STATUS_COLORS.get(s.status, "#9e9e9e") for s in run.steps][::-1]
    ax.barh(names, secs, color=cols)
    for y, (v, s) in enumerate(zip(secs, run.steps[::-1])):
        ax.text(v, y, f" {v:.1f} s" if s.seconds is not None else f" {s.status}", va="center", fontsize=8)
    ax.set_xlabel("seconds (green done, amber running, red stopped, grey pending)")
    ax.set_title(title)
    ax.margins(x=0.15)
    return Plot("time", title, _png(fig))


def plot_loss(run: RunInfo) -> Optional[Plot]:
    panels = [(s, k) for s in run.steps for k in [_loss_keys(s)] if k is not None and s.records]
    if not panels:
        return None
    title = "Loss per step (train and eval)"
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig = _figure(4.0 * cols, 2.9 * rows + 0.4)
    for i, (s, (train_key, eval_key, label)) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        tr, ev = series(s, train_key), series(s, eval_key)
        if tr:
            ax.plot(*zip(*tr), ".-", ms=4 if len(tr) < 30 else 0, color=_step_color(s), label=f"train {label}")
        if ev:
            ax.plot(*zip(*ev), "o--", color="black", ms=4, label=f"eval {label}")
        ax.set_title(f"{s.name} ({s.type})", fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return Plot("loss", title, _png(fig))


def _offsets(steps: List[StepInfo]) -> Dict[str, int]:
    """Each step's first optimizer step on a pipeline-wide axis: the steps before it, end to end."""
    out, at = {}, 0
    for s in steps:
        out[s.name] = at
        at += max(s.max_steps or 0, s.step)
    return out


def _mark_stages(ax, steps: List[StepInfo], offsets: Dict[str, int]) -> None:
    """A dotted line and the name where each step starts; the axis spans every step's max_steps
    (a running step's part still to come stays visible as empty space)."""
    end = max(offsets[s.name] + max(s.max_steps or 0, s.step) for s in steps)
    ax.set_xlim(-0.02 * end, end * 1.02 + 0.5)
    for i, s in enumerate(steps):
        x = offsets[s.name]
        ax.axvline(x, color="grey", lw=0.8, ls=":")
        # Alternate two heights: short neighbouring steps' names would overlap on one line.
        ax.annotate(s.name, (x, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12 - 11 * (i % 2)),
                    textcoords="offset points", fontsize=8, color="dimgray")


def _timeline_axes():
    """The figure and axes of a plot over the steps of the pipeline (learning rate, reward, length)."""
    fig = _figure(8, 3.2)
    return fig, fig.add_subplot()


def _timeline_plot(fig, ax, name: str, title: str) -> Plot:
    """Grid, legend to the right and title of a :func:`_timeline_axes` plot, as a :class:`Plot`."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title)
    return Plot(name, title, _png(fig))


def plot_lr(run: RunInfo) -> Optional[Plot]:
    steps = [s for s in run.steps if series(s, "lr")]
    if not steps:
        return None
    title = "Learning rate"
    fig, ax = _timeline_axes()
    off = _offsets(steps)
    for s in steps:
        xs, ys = zip(*series(s, "lr"))
        ax.plot([x + off[s.name] for x in xs], ys, ".-", color=_step_color(s), ms=3, label=f"{s.name} ({s.type})")
    _mark_stages(ax, steps, off)
    ax.set_xlabel("optimizer step across the pipeline's training steps")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    return _timeline_plot(fig, ax, "lr", title)


def _grpo_steps(run: RunInfo) -> List[StepInfo]:
    return [s for s in run.steps if s.type == "grpo" and s.records]


def plot_reward(run: RunInfo) -> Optional[Plot]:
    steps = _grpo_steps(run)
    if not steps:
        return None
    title = "Reward per domain (GRPO)"
    fig, ax = _timeline_axes()
    off = _offsets(steps)
    colors: Dict[str, object] = {}
    palette = _colors()
    for s in steps:
        doms = domains_of(s, "reward") or [""]
        for d in doms:
            key = f"reward/{d}" if d else "reward"
            pts = series(s, key)
            if not pts:
                continue
            label = d or "reward"
            c = colors.setdefault(label, palette[len(colors) % len(palette)])
            ax.plot([x + off[s.name] for x, _ in pts], [y for _, y in pts], "o-", ms=3, color=c,
                    label=label if label not in ax.get_legend_handles_labels()[1] else None)
    _mark_stages(ax, steps, off)
    ax.set_xlabel("GRPO step across the pipeline's GRPO steps")
    ax.set_ylabel("mean reward of the rollouts")
    ax.set_ylim(-0.05, 1.05)
    return _timeline_plot(fig, ax, "reward", title)


def accuracy_table(run: RunInfo) -> Dict[str, Dict[str, float]]:
    """``{source: {domain: pass@1}}``: each eval step, and each grpo step's last held-out pass@1."""
    out: Dict[str, Dict[str, float]] = {}
    for s in run.steps:
        if s.type == "eval" and s.eval.get("domains"):
            out[s.name] = {d: r["pass@1"] for d, r in s.eval["domains"].items() if r.get("pass@1") is not None}
        elif s.type == "grpo":
            got = {d: series(s, f"heldout/{d}/pass@1")[-1][1] for d in heldout_domains(s)
                   if series(s, f"heldout/{d}/pass@1")}
            if got:
                out[f"{s.name} (held-out)"] = got
    return {k: v for k, v in out.items() if v}


def plot_accuracy(run: RunInfo) -> Optional[Plot]:
    table = accuracy_table(run)
    if not table:
        return None
    title = "Held-out accuracy per domain"
    domains = list(dict.fromkeys(d for v in table.values() for d in v))
    # GRPO steps that measured held-out pass@1 (heldout_every): its course too, on the GRPO axis.
    curves = [s for s in _grpo_steps(run) if heldout_domains(s)]
    fig = _figure(max(5.0, 1.6 * len(domains) + 3) + (5.0 if curves else 0.0), 3.4)
    ax = fig.add_subplot(1, 2 if curves else 1, 1)
    width = 0.8 / len(table)
    for j, (src, vals) in enumerate(table.items()):
        xs = [i + (j - (len(table) - 1) / 2) * width for i, d in enumerate(domains) if d in vals]
        ys = [vals[d] for d in domains if d in vals]
        bars = ax.bar(xs, ys, width * 0.95, label=src, color=_colors()[j % 10])
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(domains)), domains)
    ax.set_ylabel("pass@1")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="best")
    ax.set_title("eval steps, and each GRPO step's last held-out check", fontsize=9)
    if curves:
        ax2 = fig.add_subplot(1, 2, 2)
        off = _offsets(curves)
        colors: Dict[str, object] = {}
        for s in curves:
            for d in heldout_domains(s):
                pts = series(s, f"heldout/{d}/pass@1")
                c = colors.setdefault(d, _colors()[len(colors) % 10])
                ax2.plot([x + off[s.name] for x, _ in pts], [y for _, y in pts], "o-", color=c,
                         label=d if d not in ax2.get_legend_handles_labels()[1] else None)
        _mark_stages(ax2, curves, off)
        ax2.set_xlabel("GRPO step across the pipeline's GRPO steps")
        ax2.set_ylabel("held-out pass@1 (greedy)")
        ax2.set_ylim(-0.02, 1.05)
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7, loc="upper right")
        ax2.set_title("during GRPO (heldout_every)", fontsize=9)
    fig.suptitle(title)
    return Plot("accuracy", title, _png(fig))


def plot_response_length(run: RunInfo) -> Optional[Plot]:
    steps = [s for s in _grpo_steps(run) if series(s, "response_length")]
    if not steps:
        return None
    title = "Response length (GRPO)"
    fig, ax = _timeline_axes()
    off = _offsets(steps)
    for n, s in enumerate(steps):
        mean, longest = series(s, "response_length"), series(s, "response_length_max")
        ax.plot([x + off[s.name] for x, _ in mean], [y for _, y in mean], "o-", ms=3, color="tab:blue",
                label="mean" if n == 0 else None)
        if longest:
            ax.plot([x + off[s.name] for x, _ in longest], [y for _, y in longest], "^", ms=4, color="tab:orange",
                    label="longest" if n == 0 else None)
        limit = s.entry.get("max_new_tokens")
        if isinstance(limit, int):
            end = off[s.name] + max(s.max_steps or 0, s.step)
            ax.hlines(limit, off[s.name], end, colors="grey", linestyles="--",
                      label="max_new_tokens" if n == 0 else None)
    _mark_stages(ax, steps, off)
    ax.set_xlabel("GRPO step across the pipeline's GRPO steps")
    ax.set_ylabel("tokens per response")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.12)
    return _timeline_plot(fig, ax, "response_length", title)


def plot_compression(run: RunInfo) -> Optional[Plot]:
    comp = compression(run)
    if not comp:
        return None
    rows = [(label, comp.get(key) or {}) for label, key in (("teacher", "teacher"), ("pruned", "pruned"),
                                                            ("distilled", "distilled"))]
    rows = [(label, r) for label, r in rows if r.get("loss") is not None or r.get("params") is not None]
    if not rows:
        return None
    title = "Prune and distill: teacher vs pruned vs distilled"
    fig = _figure(8, 3.2)
    colors = ["#1565c0", "#c62828", "#2e7d32"]
    for i, (key, ylabel) in enumerate((("loss", "held-out LM loss"), ("params", "parameters"))):
        ax = fig.add_subplot(1, 2, i + 1)
        vals = [(label, r.get(key)) for label, r in rows if r.get(key) is not None]
        if vals:
            bars = ax.bar([v[0] for v in vals], [v[1] for v in vals],
                          color=[colors[[r[0] for r in rows].index(v[0])] for v in vals])
            ax.bar_label(bars, fmt="%.3f" if key == "loss" else "{:,.0f}", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.margins(y=0.15)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    caption = ""
    if comp.get("gap") is not None:
        caption = f"distilled - teacher held-out loss: {comp['gap']:+.3f}"
    elif comp.get("distill") and not (comp.get("distilled") or {}).get("measured_by"):
        caption = "add a perplexity step after the distill step to measure the distilled student's loss"
    return Plot("compression", title, _png(fig), caption)


def plot_importance(run: RunInfo) -> Optional[Plot]:
    for s in run.steps:
        path = s.images.get("importance")
        if s.type == "prune" and path is not None:
            try:
                return Plot("importance", f"Layer importance ({s.name})", path.read_bytes(),
                            "drawn by the prune step: " + str(path))
            except OSError:
                return None
    return None


PLOTS: List[Callable[[RunInfo], Optional[Plot]]] = [plot_time, plot_loss, plot_lr, plot_reward, plot_accuracy,
                                                    plot_response_length, plot_compression, plot_importance]


def build_plots(run: RunInfo) -> List[Plot]:
    """Every plot the run's records support, in page order."""
    return [p for p in (fn(run) for fn in PLOTS) if p is not None]
