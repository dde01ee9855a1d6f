"""The report subcommand of ``nemo-reason``: ``report``.

    nemo-reason report RUN_DIR [--json] [--no-html]

Prints the summary of the run in RUN_DIR (per step: type, status, wall time, parameters, headline
numbers) and rewrites ``RUN_DIR/report.html`` with PNG copies of its plots in ``RUN_DIR/report/``;
``--json`` prints the summary as one JSON object instead of the table, ``--no-html`` draws nothing.
It reads the run's files only, so it works on any run: finished, interrupted, or still going (steps
so far; a running step's records up to now). Exit 2 when RUN_DIR is not a run folder.
"""

from __future__ import annotations

import argparse


def cmd_report(ns) -> int:
    import json

    from nemo_reason.report import collect_run, format_summary, summary_dict, write_report

    run = collect_run(ns.run_dir)
    path = None if ns.no_html else write_report(run)
    if ns.json:
        out = summary_dict(run)
        out["report"] = str(path) if path else None
        print(json.dumps(out, indent=1, default=str))
        return 0
    print(format_summary(run))
    if path is not None:
        print(f"report: {path} (plots in {path.parent / 'report'})")
    return 0


def add_report_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="summarise a run and write RUN_DIR/report.html (also while it runs)",
                       description="Print the summary of the run in RUN_DIR (per step: type, status, wall time, "
                                   "parameters, headline numbers) and rewrite RUN_DIR/report.html, one "
                                   "self-contained page with the pipeline diagram, tables and plots (PNG copies in "
                                   "RUN_DIR/report/). Works on a run that is still going.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run.dir of a `nemo-reason run`")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--no-html", action="store_true", help="print the summary only; draw and write nothing")
    p.set_defaults(fn=cmd_report)
