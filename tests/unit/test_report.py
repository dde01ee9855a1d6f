"""The run report over a run folder written here in the formats the pipeline and its steps write
(done.json, attempt.json, metrics.jsonl, metrics.json, eval.json, checkpoints' meta.json): statuses
of a run still going, headline numbers, the prune/distill comparison, the plots (real PNGs, with
titles, not blank) and the page (self-contained, one diagram box per step). The same code over a
real run, rendered in a real browser: tests/e2e/test_report.py."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import time
from pathlib import Path

import pytest
import yaml

from nemo_reason.report import collect_run, compression, format_summary, summary_dict
from nemo_reason.report.page import render_page, write_page
from nemo_reason.report.plots import build_plots
from nemo_reason.report.summary import headlines

PIPELINE = [
    {"type": "pretrain", "name": None, "overrides": {}},
    {"type": "grpo", "name": "grpo_math", "domains": ["math"], "max_new_tokens": 16,
     "overrides": {"trainer.max_steps": 4}},
    {"type": "prune", "name": None, "overrides": {}},
    {"type": "distill", "name": None, "teacher": "grpo_math", "overrides": {"trainer.max_steps": 4}},
    {"type": "perplexity", "name": "distilled_loss", "overrides": {}},
    {"type": "eval", "name": None, "overrides": {}},
]


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def _checkpoint(step_dir: Path, step: int, params: int) -> str:
    ck = step_dir / "checkpoints" / f"iter_{step:07d}"
    _write(ck / "meta.json", {"params": params, "step": step})
    _write(ck / "complete.json", {"step": step})
    return str(ck)


def _records(n: int, **series) -> str:
    lines = []
    for i in range(1, n + 1):
        rec = {"step": i, "lr": 1e-3 * i / n}
        rec.update({k: f(i) for k, f in series.items()})
        lines.append(json.dumps(rec))
    return "\n".join(lines) + "\n"


def _done(step_dir: Path, kind: str, seconds: float, metrics: dict, checkpoint=None, inp=None) -> None:
    _write(step_dir / "attempt.json", {"type": kind, "fingerprint": "f", "started": time.time() - seconds})
    _write(step_dir / "done.json", {"type": kind, "fingerprint": "f", "checkpoint": checkpoint, "seconds": seconds,
                                    "metrics": metrics, "input": {"checkpoint": inp} if inp else None})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """pretrain, grpo_math, prune, distill, distilled_loss done; eval not started (read-only: copy to change)."""
    run = tmp_path_factory.mktemp("report") / "run"
    _write(run / "config.yaml", yaml.safe_dump({"run": {"name": "toy"}, "trainer": {"max_steps": 6},
                                                 "pipeline": PIPELINE}))
    pre = _checkpoint(run / "pretrain", 6, 1000)
    _write(run / "pretrain" / "metrics.jsonl", _records(6, loss=lambda i: 7.0 - 0.5 * i,
                                                           **{"eval_loss": lambda i: 6.0 - 0.5 * i}))
    _done(run / "pretrain", "pretrain", 30.0, {"loss": 4.0}, pre)
    grpo = _checkpoint(run / "grpo_math", 4, 1000)
    _write(run / "grpo_math" / "metrics.jsonl",
           _records(4, loss=lambda i: 0.0, reward=lambda i: 0.1 * i, **{"reward/math": lambda i: 0.1 * i},
                    response_length=lambda i: 10.0 + i, response_length_max=lambda i: 16,
                    **{"heldout/math/pass@1": lambda i: 0.05 * i}))
    _done(run / "grpo_math", "grpo", 12.0, {}, grpo, pre)
    pruned = _checkpoint(run / "prune", 0, 400)
    prune_metrics = {"params_before": 1000, "params_after": 400, "val_loss_before": 2.0, "val_loss_after": 5.0,
                     "targets": {"hidden_size": 96}, "sizes": {"hidden_size": 96}, "hybrid_pattern": "M*-"}
    _write(run / "prune" / "metrics.json", prune_metrics)
    _done(run / "prune", "prune", 5.0, prune_metrics, pruned, grpo)
    dist = _checkpoint(run / "distill", 4, 400)
    _write(run / "distill" / "metrics.jsonl", _records(4, kd_loss=lambda i: 1.0 / i, eval_kd_loss=lambda i: 0.9 / i))
    _done(run / "distill", "distill", 8.0, {}, dist, pruned)
    _done(run / "distilled_loss", "perplexity", 0.5, {"loss": 2.25, "perplexity": 9.49, "params": 400}, dist, dist)
    return run


@pytest.fixture(scope="module")
def plots(run_dir):
    return build_plots(collect_run(run_dir))


def test_statuses_params_and_headlines(run_dir):
    run = collect_run(run_dir)
    assert [s.status for s in run.steps] == ["done"] * 5 + ["pending"]
    assert [s.params for s in run.steps] == [1000, 1000, 400, 400, 400, None]
    assert run.status == "stopped" and run.done == 5
    got = {s.name: dict(headlines(s, run)) for s in run.steps}
    assert got["pretrain"]["loss"] == (6.5, 4.0) and got["pretrain"]["eval loss"] == 3.0
    assert got["grpo_math"]["reward math"] == (0.1, 0.4)  # first and last quarter (one record each)
    assert got["grpo_math"]["held-out math pass@1"] == pytest.approx(0.2)
    assert got["prune"]["params"] == (1000, 400) and got["prune"]["removed"] == "600 (60.0%)"
    assert got["distill"]["gap to teacher"] == pytest.approx(0.25)  # 2.25 (distilled) - 2.0 (teacher)
    assert got["eval"] == {}
    comp = compression(run)
    assert comp["teacher"] == {"loss": 2.0, "params": 1000} and comp["pruned"] == {"loss": 5.0, "params": 400}
    assert comp["distilled"]["measured_by"] == "distilled_loss"
    table = format_summary(run)
    assert "5/6 steps done" in table
    assert re.search(r"3\s+prune\s+prune\s+done\s+5\.0s\s+400\s+params 1,000 -> 400, removed 600", table), table
    assert json.loads(json.dumps(summary_dict(run)))["pipeline"][5]["status"] == "pending"


def test_a_run_still_going(run_dir, tmp_path):
    """The eval step started (attempt.json) and pretrain's metrics are mid-write: a cut line is skipped;
    an old attempt with no recent write reads as stopped."""
    import shutil

    run_dir = Path(shutil.copytree(run_dir, tmp_path / "run"))
    _write(run_dir / "eval" / "attempt.json", {"type": "eval", "fingerprint": "g", "started": time.time() - 3})
    with open(run_dir / "pretrain" / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "loss": 3.')  # a line being written
    run = collect_run(run_dir)
    ev = run.step("eval")
    assert ev.status == "running" and 2.5 < ev.seconds < 60
    assert run.status == "running"
    assert run.step("pretrain").step == 6
    old = time.time() - 3600
    for p in (run_dir / "eval").iterdir():
        os.utime(p, (old, old))
    _write(run_dir / "eval" / "attempt.json", {"type": "eval", "fingerprint": "g", "started": old - 10})
    os.utime(run_dir / "eval" / "attempt.json", (old, old))
    ev = collect_run(run_dir).step("eval")
    assert ev.status == "stopped" and ev.seconds == pytest.approx(10, abs=1)


def test_plots_have_titles_and_pixels(plots):
    from PIL import Image, ImageStat

    plots = {p.name: p for p in plots}
    assert set(plots) == {"time", "loss", "lr", "reward", "accuracy", "response_length", "compression"}
    assert plots["compression"].title == "Prune and distill: teacher vs pruned vs distilled"
    assert "+0.250" in plots["compression"].caption
    for p in plots.values():
        im = Image.open(io.BytesIO(p.png)).convert("L")
        assert im.size[0] >= 400 and im.size[1] >= 200, (p.name, im.size)
        assert ImageStat.Stat(im).stddev[0] > 10, f"plot {p.name} looks blank"


def test_page_is_self_contained(run_dir, plots, tmp_path):
    import shutil

    run = collect_run(run_dir)
    page = render_page(run, plots)
    assert not re.search(r"""(src|href)=["'](https?:)?//""", page), "the page must not load anything from a network"
    assert "<link" not in page and "@import" not in page
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(imgs) == len(plots) and base64.b64decode(imgs[0])[:8] == b"\x89PNG\r\n\x1a\n"
    boxes = re.findall(r'<g class="step" data-step="([^"]+)" data-status="([^"]+)"', page)
    assert boxes == [(s.name, s.status) for s in run.steps]
    assert page.count('marker-end="url(#arrow)"') == len(run.steps) - 1
    for p in plots:
        assert f"<figcaption>{p.title}" in page
    run.run_dir = Path(shutil.copytree(run_dir, tmp_path / "run"))
    path = write_page(run, plots)
    assert path == run.run_dir / "report.html" and "<svg" in path.read_text()
    assert sorted(f.name for f in (run.run_dir / "report").iterdir()) == sorted(f"{p.name}.png" for p in plots)


def test_not_a_run_folder(tmp_path):
    from nemo_reason.config.errors import ConfigError

    with pytest.raises(ConfigError, match="no such run folder"):
        collect_run(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="no readable config.yaml"):
        collect_run(tmp_path)


def test_report_command_is_light(run_dir, tmp_path):
    """`nemo-reason report` reads files only: no torch or Megatron-Core imported (a login node, a run
    going on another machine)."""
    import shutil
    import subprocess
    import sys

    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    probe = ("import sys, contextlib, io\nfrom nemo_reason.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             f"    rc = main(['report', {str(run)!r}, '--no-html'])\n"
             "print('RC', rc, 'HEAVY', ','.join(m for m in ('torch', 'megatron.core') if m in sys.modules) or '-')\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "RC 0 HEAVY -" in out.stdout, out.stdout + out.stderr[-2000:]


def test_the_pipeline_hook(run_dir, tmp_path, monkeypatch, capsys):
    """The end of `nemo-reason run`: the table (NEMO_REASON_REPORT=summary: no page), nothing (off), and a
    report that cannot be made says so without raising (the run's results are on disk already)."""
    from nemo_reason.stages.pipeline import report

    monkeypatch.setenv("NEMO_REASON_REPORT", "summary")
    report(run_dir)
    out = capsys.readouterr().out
    assert out.startswith("[nemo-reason] run toy") and "[nemo-reason]   3  prune" in out
    assert not (run_dir / "report.html").exists()
    monkeypatch.setenv("NEMO_REASON_REPORT", "off")
    report(run_dir)
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("NEMO_REASON_REPORT", "html")
    report(tmp_path)  # no config.yaml
    assert "report failed (ConfigError" in capsys.readouterr().out


def test_a_moved_run_folder(run_dir, tmp_path):
    """Checkpoint paths are recorded absolute; a run folder moved since still finds its checkpoints' meta.json."""
    import shutil

    moved = Path(shutil.copytree(run_dir, tmp_path / "moved"))
    done = json.loads((moved / "prune" / "done.json").read_text())
    done["checkpoint"] = "/nonexistent/old/place/prune/checkpoints/iter_0000000"
    (moved / "prune" / "done.json").write_text(json.dumps(done))
    assert collect_run(moved).step("prune").params == 400
