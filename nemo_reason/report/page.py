"""``<run.dir>/report.html``: one self-contained page about a run, and PNG copies of its plots.

The page needs no network to view: its CSS is inline, its plots are PNGs embedded as base64 data
URIs, the pipeline diagram is inline SVG, and its only script is a few inline lines that record,
once the page has loaded, each image's decoded width (``data-natural-width``) and its box on the page
(``data-rect="x,y,width,height"``, CSS pixels), and the number of decoded images on
``<body data-images-decoded>``, so that a headless browser's dumped DOM shows that the images decoded
and where to look for them in a screenshot. Sections, top to bottom:

1. the run: name, folder, status, steps done, step time, when the page was made;
2. the pipeline as a diagram: one box per step (name, type, status by colour, wall time, parameters,
   progress of a running training step), arrows in pipeline order;
3. the summary table (:func:`~nemo_reason.report.summary.format_summary`'s rows);
4. the plots (:mod:`nemo_reason.report.plots`), each titled; copies in ``<run.dir>/report/<name>.png``;
5. per step: its facts (status, time, parameters, model, checkpoint, pipeline-entry fields and
   overrides), its headline numbers, and what only that step type has (eval: a row per domain;
   prune: the sizes before and after; training steps: the last logged record).

Both files are written atomically (a browser refreshing the page while a run rewrites it sees the
old page or the new one).
"""

from __future__ import annotations

import base64
import html
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from nemo_reason.report.collect import RunInfo, StepInfo
from nemo_reason.report.plots import STATUS_COLORS, Plot
from nemo_reason.report.summary import fmt_headline, fmt_seconds, fmt_value, headlines, progress

REPORT_HTML = "report.html"
PLOTS_DIR = "report"

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1180px;
       color: #212121; background: #fff; padding: 0 16px; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 32px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.meta { color: #616161; font-size: 13px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 12px; }
th, td { border: 1px solid #e0e0e0; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.status { font-weight: 600; }
.done { color: #2e7d32; } .running { color: #f9a825; } .stopped { color: #c62828; } .pending { color: #9e9e9e; }
.plots { display: flex; flex-wrap: wrap; gap: 18px; }
figure { margin: 0; border: 1px solid #eee; padding: 8px; background: #fff; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 14px; font-weight: 600; margin-bottom: 4px; }
figcaption span { font-weight: normal; color: #616161; font-size: 12px; display: block; }
.diagram { overflow-x: auto; }
code { font-size: 12px; background: #f5f5f5; padding: 1px 4px; }
"""

# Records each image's decoded width (and where it sits on the page) so that a headless browser's
# dumped DOM proves the images decoded, and a screenshot can be checked where they are drawn.
SCRIPT = """
window.addEventListener("load", function () {
  var n = 0;
  document.querySelectorAll("img").forEach(function (img) {
    var r = img.getBoundingClientRect();
    img.setAttribute("data-natural-width", img.naturalWidth);
    img.setAttribute("data-rect", [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height]
                     .map(Math.round).join(","));
    if (img.complete && img.naturalWidth > 0) { n += 1; }
  });
  document.body.setAttribute("data-images-decoded", n);
});
"""

FILL = {"done": "#e8f5e9", "running": "#fff8e1", "stopped": "#ffebee", "pending": "#f5f5f5"}


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def diagram_svg(run: RunInfo, per_row: int = 5) -> str:
    """The pipeline as inline SVG: boxes in rows of ``per_row``, arrows in pipeline order."""
    w, h, gap, vgap, pad = 178, 86, 36, 40, 10
    n = len(run.steps)
    rows = max(1, (n + per_row - 1) // per_row)
    cols = min(per_row, max(n, 1))
    width = pad * 2 + cols * w + (cols - 1) * gap
    height = pad * 2 + rows * h + (rows - 1) * vgap
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="pipeline diagram" font-family="sans-serif">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#616161"/></marker></defs>']

    def box_xy(i: int):
        r, c = divmod(i, per_row)
        return pad + c * (w + gap), pad + r * (h + vgap)

    for i in range(n - 1):
        (x0, y0), (x1, y1) = box_xy(i), box_xy(i + 1)
        if y0 == y1:
            d = f"M {x0 + w} {y0 + h / 2} L {x1 - 2} {y1 + h / 2}"
        else:  # to the next row: down, back to its first box, down
            mid = y0 + h + vgap / 2
            d = f"M {x0 + w / 2} {y0 + h} L {x0 + w / 2} {mid} L {x1 + w / 2} {mid} L {x1 + w / 2} {y1 - 2}"
        out.append(f'<path d="{d}" fill="none" stroke="#616161" stroke-width="1.6" marker-end="url(#arrow)"/>')
    for i, s in enumerate(run.steps):
        x, y = box_xy(i)
        stroke = STATUS_COLORS.get(s.status, "#9e9e9e")
        out.append(f'<g class="step" data-step="{_e(s.name)}" data-status="{_e(s.status)}">'
                   f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8" fill="{FILL.get(s.status, "#fff")}" '
                   f'stroke="{stroke}" stroke-width="2"/>')
        lines = [(f"{s.index}. {s.name}", 13, "bold", "#212121"), (s.type, 11, "normal", "#616161"),
                 (s.status + (f" {progress(s)}" if progress(s) else "") + (f" · {fmt_seconds(s.seconds)}"
                                                                         if s.seconds is not None else ""),
                  12, "bold", stroke),
                 (f"{s.params:,} params" if s.params is not None else "", 11, "normal", "#424242")]
        for j, (text, size, weight, color) in enumerate(lines):
            if text:
                text = text if len(text) <= 24 else text[:23] + "…"
                out.append(f'<text x="{x + 10}" y="{y + 20 + j * 18}" font-size="{size}" font-weight="{weight}" '
                           f'fill="{color}">{_e(text)}</text>')
        if s.status in ("running", "stopped") and s.records and s.max_steps:
            frac = min(1.0, s.step / s.max_steps)
            out.append(f'<rect x="{x + 10}" y="{y + h - 8}" width="{w - 20}" height="4" fill="#e0e0e0"/>'
                       f'<rect x="{x + 10}" y="{y + h - 8}" width="{(w - 20) * frac:.1f}" height="4" fill="{stroke}"/>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


def _table(rows: List[List[Any]], header: Optional[List[str]] = None, num_cols=()) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(f'<td class="num">{_e(c)}</td>' if i in num_cols else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>")
    out.append("</table>")
    return "".join(out)


def summary_table(run: RunInfo) -> str:
    rows = []
    for s in run.steps:
        status = f'<span class="status {_e(s.status)}">{_e(s.status)} {_e(progress(s))}</span>'
        rows.append([_e(s.index), f'<a href="#step-{_e(s.name)}">{_e(s.name)}</a>', _e(s.type), status,
                     fmt_seconds(s.seconds), "-" if s.params is None else f"{s.params:,}",
                     _e(fmt_headline(headlines(s, run)) or "-")])
    return _table(rows, ["#", "step", "type", "status", "time", "params", "headline"], num_cols=(4, 5))


def _step_specific(s: StepInfo) -> str:
    if s.type == "eval" and s.eval.get("domains"):
        k = s.eval.get("k", 1)
        keys = ["pass@1"] + ([f"pass@{k}", f"maj@{k}"] if k and k > 1 else []) + ["mean_length", "prompts", "samples"]
        rows = [[_e(d)] + [fmt_value(r.get(key)) for key in keys] for d, r in s.eval["domains"].items()]
        samp = s.eval.get("sampling") or {}
        note = ", ".join(f"{k2} {v}" for k2, v in samp.items())
        return (f"<h3>Eval per domain</h3>{_table(rows, ['domain'] + keys, num_cols=tuple(range(1, len(keys) + 1)))}"
                f'<p class="meta">sampling: {_e(note)}</p>')
    if s.type == "prune" and s.metrics.get("targets"):
        sizes = s.metrics.get("sizes") or {}
        rows = [[_e(k), _e(fmt_value(v)), _e(fmt_value(sizes.get(k, v)))] for k, v in s.metrics["targets"].items()]
        extra = ""
        if s.metrics.get("hybrid_pattern"):
            extra = f'<p class="meta">hybrid pattern after pruning: <code>{_e(s.metrics["hybrid_pattern"])}</code>'
            if s.metrics.get("kept_layers"):
                extra += f'; kept layers {_e(s.metrics["kept_layers"])}'
            extra += "</p>"
        return f"<h3>Prune targets</h3>{_table(rows, ['size', 'target', 'result'])}{extra}"
    if s.records:
        last = s.records[-1]
        keys = [k for k, v in last.items() if isinstance(v, (int, float)) and not isinstance(v, bool)][:24]
        rows = [[_e(k), fmt_value(last[k])] for k in keys]
        head = f"<h3>Last logged record (step {_e(last.get('step', '?'))})</h3>"
        return head + _table(rows, ["metric", "value"], (1,))
    return ""


def step_section(s: StepInfo, run: RunInfo) -> str:
    facts = [["status", f'<span class="status {_e(s.status)}">{_e(s.status)} {_e(progress(s))}</span>'],
             ["wall time", fmt_seconds(s.seconds)],
             ["parameters", "-" if s.params is None else f"{s.params:,}"]]
    if s.model:
        facts.append(["model", _e(s.model)])
    if s.max_steps and s.records:
        facts.append(["optimizer steps", f"{s.step} of {s.max_steps}"])
    if s.checkpoint:
        facts.append(["checkpoint", f"<code>{_e(s.checkpoint)}</code>"])
    fields = {k: v for k, v in s.entry.items() if k != "overrides"}
    if fields:
        facts.append(["fields", _e(", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in fields.items()))])
    if s.entry.get("overrides"):
        facts.append(["overrides", _e(", ".join(f"{k}={v}" for k, v in s.entry["overrides"].items()))])
    head = headlines(s, run)
    parts = [f'<h2 id="step-{_e(s.name)}">{_e(s.index)}. {_e(s.name)} <span class="meta">({_e(s.type)})</span></h2>',
             _table(facts)]
    if head:
        parts.append("<h3>Headline</h3>" + _table([[_e(label), fmt_value(v)] for label, v in head],
                                                    ["number", "value"], (1,)))
    parts.append(_step_specific(s))
    return "\n".join(parts)


def _figure_html(p: Plot) -> str:
    data = base64.b64encode(p.png).decode("ascii")
    cap = f"<span>{_e(p.caption)}</span>" if p.caption else ""
    return (f'<figure data-plot="{_e(p.name)}"><figcaption>{_e(p.title)}{cap}</figcaption>'
            f'<img src="data:image/png;base64,{data}" alt="{_e(p.title)}" title="{_e(p.title)}"></figure>')


def render_page(run: RunInfo, plots: List[Plot]) -> str:
    made = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.collected_at))
    status = f'<span class="status {_e(run.status)}">{_e(run.status)}</span>'
    body = [f"<h1>Run report: {_e(run.name)}</h1>",
            f'<p class="meta">{status} · {run.done} of {len(run.steps)} steps done · '
            f"{_e(fmt_seconds(run.seconds))} of step time · <code>{_e(run.run_dir)}</code> · made {_e(made)} · "
            f"regenerate with <code>nemo-reason report {_e(run.run_dir)}</code></p>",
            "<h2>Pipeline</h2>", f'<div class="diagram">{diagram_svg(run)}</div>',
            "<h2>Summary</h2>", summary_table(run), "<h2>Plots</h2>"]
    body.append('<div class="plots">' + "\n".join(_figure_html(p) for p in plots) + "</div>" if plots
                else '<p class="meta">no step has logged anything yet</p>')
    body += [step_section(s, run) for s in run.steps]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(run.name)}: nemo-reason run report</title><style>{CSS}</style></head>\n"
            "<body>\n" + "\n".join(body) + f"\n<script>{SCRIPT}</script>\n</body></html>\n")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_page(run: RunInfo, plots: List[Plot]) -> Path:
    """Write ``<run.dir>/report.html`` and ``<run.dir>/report/<plot>.png``; returns the page's path."""
    pdir = run.run_dir / PLOTS_DIR
    pdir.mkdir(exist_ok=True)
    for p in plots:
        _write_atomic(pdir / f"{p.name}.png", p.png)
    path = run.run_dir / REPORT_HTML
    _write_atomic(path, render_page(run, plots).encode("utf-8"))
    return path


def plots_index(plots: List[Plot]) -> Dict[str, str]:
    """``{plot name: title}`` (what a test of the page looks for)."""
    return {p.name: p.title for p in plots}
