"""SIGTERM loses nothing: `kill` (what scancel, docker stop and a pod eviction send) on a running
`nemo-reason run` finishes the current step, saves a complete checkpoint and exits 75; the same
command then finishes the run with the losses of an uninterrupted one. With 2 local ranks the CLI
passes the signal on to both (the marker counts the ranks that got it)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import FAST, losses, read_metrics, run_cli

STEPS = 6  # FAST's max_steps: the session's uninterrupted baseline


def _sigterm_mid_run(args, cwd: Path, step_dir: Path):
    """Start `nemo-reason ARGS`, SIGTERM it once the first step is logged; returns (exit code, output)."""
    log = cwd / "sigterm.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nemo_reason.cli", *args], cwd=cwd,
                                stdout=out, stderr=subprocess.STDOUT)
        metrics = step_dir / "metrics.jsonl"
        sent = False
        try:
            deadline = time.time() + 180
            while time.time() < deadline and proc.poll() is None:
                if metrics.is_file() and metrics.read_text().strip():
                    os.kill(proc.pid, signal.SIGTERM)
                    sent = True
                    break
                time.sleep(0.01)
            rc = proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text(errors="replace")
    assert sent, f"the run ended before its first step was logged:\n{text[-4000:]}"
    return rc, text


def _stopped_step(out: str, step_dir: Path) -> int:
    m = re.search(r"SIGTERM: stopped after step (\d+) of 'pretrain' with checkpoint (\S+);", out)
    assert m, out[-4000:]
    step = int(m.group(1))
    assert 1 <= step < STEPS, f"stopped after step {step}: the signal came too late to test a stop"
    from nemo_reason.checkpoint.io import find_latest

    newest = find_latest(step_dir / "checkpoints")
    assert newest is not None and newest.name == f"iter_{step:07d}" == Path(m.group(2)).name, newest
    assert [r["step"] for r in read_metrics(step_dir)] == list(range(1, step + 1))
    assert not (step_dir / "done.json").exists()  # the step is not marked done
    return step


def test_sigterm_checkpoints_exits_75_and_rerun_matches_uninterrupted(tmp_path, tiny_fast_baseline):
    args = ["run", "tiny", *FAST, "run.dir=term"]
    step_dir = tmp_path / "term" / "pretrain"
    rc, out = _sigterm_mid_run(args, tmp_path, step_dir)
    assert rc == 75, out[-4000:]
    stopped = _stopped_step(out, step_dir)
    marker = json.loads((tmp_path / "term" / "preempted.json").read_text())
    assert marker["signals"] == ["TERM"] and marker["requeue"] is False and marker["iteration"] == stopped
    again = run_cli(args, cwd=tmp_path)
    assert f"(step {stopped}, " in again.stdout
    got = losses(step_dir)
    assert sorted(got) == sorted(tiny_fast_baseline) == list(range(1, STEPS + 1))
    for step, ref in tiny_fast_baseline.items():
        assert abs(got[step] - ref) <= 1e-6 * abs(ref), (step, got[step], ref)


def test_sigterm_to_the_cli_reaches_both_local_ranks(tmp_path):
    args = ["run", "tiny", *FAST, "launcher.nproc_per_node=2", "run.dir=term2"]
    step_dir = tmp_path / "term2" / "pretrain"
    rc, out = _sigterm_mid_run(args, tmp_path, step_dir)
    assert rc == 75, out[-4000:]
    stopped = _stopped_step(out, step_dir)
    marker = json.loads((tmp_path / "term2" / "preempted.json").read_text())
    assert marker["world_size"] == 2 and marker["ranks_signalled"] == {"TERM": 2}, marker
    assert marker["iteration"] == stopped and "Traceback" not in out, out[-4000:]
