"""The run report of the shortened default pipeline (tests/e2e/lifecycle_run.py), as a user sees it:
the summary table at the end of `nemo-reason run`, `nemo-reason report RUN_DIR` (the table, report.html
and report/*.png), the page rendered in a real headless browser (Chromium from Debian's packages,
installed by .ci/run; these tests skip without it) with its plots decoded and drawn (pixels, not
just a file), and the report of a run still going."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli


CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium: install Debian's `chromium` "
                                    "(apt-get install -y chromium; .ci/run does) to render the report page")

TITLES = ["Wall time per step", "Loss per step (train and eval)", "Learning rate", "Reward per domain (GRPO)",
          "Held-out accuracy per domain", "Response length (GRPO)",
          "Prune and distill: teacher vs pruned vs distilled", "Layer importance (prune)"]
PNGS = ["time", "loss", "lr", "reward", "accuracy", "response_length", "compression", "importance"]
BIG = ("*.distcp", "*.pt", "*.pth", "tensorboard", "eval_samples.jsonl", "tokenizer")


def _copy(src: Path, dst: Path) -> Path:
    """The run's small files (markers, metrics, configs, meta.json), modification times kept."""
    return Path(shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*BIG)))


@pytest.fixture(scope="module")
def reported(lifecycle_run, tmp_path_factory):
    """`nemo-reason report` on a copy of the lifecycle run (the fixture's folder stays read-only)."""
    run_dir = _copy(lifecycle_run.run_dir, tmp_path_factory.mktemp("report") / "run")
    proc = run_cli(["report", str(run_dir)], cwd=run_dir.parent)
    return run_dir, proc.stdout


def test_run_ends_with_the_summary(lifecycle_run):
    out = lifecycle_run.stdout
    assert "report failed" not in out, out[-3000:]
    table = out[out.index("[nemo-reason] run tiny_lifecycle"):]
    assert f"{len(lifecycle_run.step_names)}/{len(lifecycle_run.step_names)} steps done" in table
    for name in lifecycle_run.step_names:
        assert re.search(rf"\[nemo-reason\]\s+\d+\s+{name}\s+\w+\s+done\s+\S+\s+[\d,]+\s+\S", table), (name, table)
    for words in ("phases broad -> high_quality", "reward math", "reward code", "held-out math pass@1", "removed",
                  "gap to teacher", "math pass@1", "mcq pass@1", "code pass@1"):
        assert words in table, (words, table)


def test_report_command(reported, lifecycle_run):
    run_dir, out = reported
    assert f"report: {run_dir / 'report.html'}" in out
    assert sorted(p.stem for p in (run_dir / "report").glob("*.png")) == sorted(PNGS)
    summary = json.loads(run_cli(["report", str(run_dir), "--json", "--no-html"], cwd=run_dir.parent).stdout)
    steps = {s["name"]: s for s in summary["pipeline"]}
    assert list(steps) == lifecycle_run.step_names and {s["status"] for s in steps.values()} == {"done"}
    comp = summary["compression"]
    assert comp["teacher"]["params"] > comp["pruned"]["params"] == steps["distill"]["params"]
    assert comp["distilled"]["measured_by"] == "distilled_loss"
    assert comp["gap"] == pytest.approx(comp["distilled"]["loss"] - comp["teacher"]["loss"])
    assert steps["prune"]["headline"]["params"] == [comp["teacher"]["params"], comp["pruned"]["params"]]


def _chromium(args, tmp_path: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           "--force-device-scale-factor=1", "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}", *args]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)


@needs_chromium
def test_page_in_a_headless_browser(reported, tmp_path):
    from PIL import Image, ImageStat

    run_dir, _ = reported
    url = (run_dir / "report.html").as_uri()
    # The DOM after the page's load handler ran: which images decoded, at what size, where.
    dom = _chromium(["--window-size=1280,1000", "--virtual-time-budget=5000", "--dump-dom", url], tmp_path).stdout
    imgs = re.findall(r"<img [^>]*>", dom)
    assert len(imgs) == len(TITLES), dom[:2000]
    assert re.search(rf'<body data-images-decoded="{len(TITLES)}"', dom), re.findall(r"<body[^>]*>", dom)
    rects = []
    for tag in imgs:
        width = int(re.search(r'data-natural-width="(\d+)"', tag).group(1))
        assert width >= 400, tag[:200]
        rects.append([int(v) for v in re.search(r'data-rect="([\d,]+)"', tag).group(1).split(",")])
    text = re.sub(r"<[^>]+>", " ", dom)
    for title in TITLES:
        assert title in text, title
    assert len(re.findall(r'<g class="step" [^>]*data-status="done"', dom)) == 8
    # A screenshot as tall as the page's plots, and the pixels where each plot was laid out.
    height = max(y + h for _, y, _, h in rects) + 40
    shot = tmp_path / "report.png"
    proc = _chromium([f"--window-size=1280,{height}", f"--screenshot={shot}", url], tmp_path)
    assert shot.is_file(), proc.stderr[-2000:]
    im = Image.open(shot).convert("L")
    assert im.size == (1280, height)
    for title, (x, y, w, h) in zip(TITLES, rects):
        crop = im.crop((x, y, x + w, y + h))
        stat = ImageStat.Stat(crop)
        # A drawn plot: dark ink (axes, text) on a white ground, much variation.
        assert stat.stddev[0] > 20 and crop.getextrema()[0] < 80, (title, stat.stddev, crop.getextrema())
    top = ImageStat.Stat(im.crop((0, 0, 1280, min(height, 700))))  # title, diagram, summary
    assert top.stddev[0] > 20


def test_report_of_a_run_still_going(reported, tmp_path):
    """The distill step mid-way (attempt.json just written, no done.json), the steps after it not started."""
    run_dir = _copy(reported[0], tmp_path / "run")
    for name in ("distilled_loss", "eval"):
        shutil.rmtree(run_dir / name)
    (run_dir / "distill" / "done.json").unlink()
    attempt = json.loads((run_dir / "distill" / "attempt.json").read_text())
    attempt["started"] = time.time() - 5
    (run_dir / "distill" / "attempt.json").write_text(json.dumps(attempt))
    lines = (run_dir / "distill" / "metrics.jsonl").read_text().splitlines()
    (run_dir / "distill" / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    out = run_cli(["report", str(run_dir), "--json", "--no-html"], cwd=tmp_path).stdout
    summary = json.loads(out)
    status = {s["name"]: s["status"] for s in summary["pipeline"]}
    assert list(status.values()) == ["done"] * 5 + ["running", "pending", "pending"], status
    distill = summary["pipeline"][5]
    assert distill["step"] == 1 and distill["max_steps"] == 4 and 4 <= distill["seconds"] < 120
    from nemo_reason.report import collect_run
    from nemo_reason.report.page import render_page

    page = render_page(collect_run(run_dir), [])  # the page's diagram and tables (the plots: above)
    assert 'data-step="distill" data-status="running"' in page and "running 1/4" in page
    assert summary["compression"]["distilled"]["loss"] is None
