"""Run reports: the summary table at the end of ``nemo-reason run``, and ``<run.dir>/report.html``.

    nemo-reason report RUN_DIR [--json] [--no-html]

:func:`report_run` reads a run folder (:mod:`~nemo_reason.report.collect`: any run, finished,
interrupted or still going), prints the summary (:mod:`~nemo_reason.report.summary`: per step its
type, status, wall time, parameters and headline numbers) and writes ``<run.dir>/report.html``
(:mod:`~nemo_reason.report.page`) with the plots of :mod:`~nemo_reason.report.plots`, PNG copies
in ``<run.dir>/report/``. The pipeline calls it on rank 0 when it finishes or stops. It reads files
only (no torch, no model): on a run that is going, it shows the steps so far. Layout: docs/report.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

from nemo_reason.report.collect import RunInfo, StepInfo, collect_run
from nemo_reason.report.summary import compression, format_summary, headlines, summary_dict

__all__ = ["RunInfo", "StepInfo", "collect_run", "compression", "format_summary", "headlines", "summary_dict",
           "write_report", "report_run"]


def write_report(run: RunInfo) -> Path:
    """Draw the plots and write ``<run.dir>/report.html`` and ``<run.dir>/report/*.png``."""
    from nemo_reason.report.page import write_page
    from nemo_reason.report.plots import build_plots

    return write_page(run, build_plots(run))


def report_run(run_dir: str | os.PathLike, html: bool = True,
               say: Optional[Callable[[str], None]] = print) -> Optional[Path]:
    """Print the summary of the run in ``run_dir`` (through ``say``) and, with ``html``, write its
    report page; returns the page's path (None without ``html``)."""
    run = collect_run(run_dir)
    if say is not None:
        say(format_summary(run))
    if not html:
        return None
    path = write_report(run)
    if say is not None:
        say(f"report: {path} (plots in {path.parent / 'report'})")
    return path
