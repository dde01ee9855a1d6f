"""`nemo-reason launch tiny launcher=slurm` against a real single-node SLURM (slurm_cluster.py):
a 2-task CPU job completes with metrics and a checkpoint; a job sent SLURM's warning signal
mid-run checkpoints, requeues itself and resumes from that step with no step lost or repeated.

Skips only when SLURM's binaries are missing (`.ci/run` installs Debian's slurm-wlm and munge).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from tests.conftest import FAST, read_metrics, run_cli
from tests.e2e.slurm_cluster import LocalSlurm, missing_binaries

pytestmark = pytest.mark.skipif(
    bool(missing_binaries()) or os.geteuid() != 0,
    reason=f"needs a local SLURM as root (apt-get install slurm-wlm munge); missing: {', '.join(missing_binaries())}"
    if missing_binaries() else "needs root to run slurmctld/slurmd (SlurmUser=root)",
)

# 2 ranks on CPU (data parallel), no GPUs asked for.
CPU2 = ["launcher=slurm", "launcher.gpus_per_node=0", "launcher.nproc_per_node=2"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("slurm_runs")


def _submit(slurm, workdir, overrides):
    proc = run_cli(["launch", "tiny", *CPU2, *overrides], cwd=workdir, env=slurm.env(), timeout=120)
    m = re.search(r"^Submitted batch job (\d+)$", proc.stdout, re.M)
    assert m, proc.stdout
    return m.group(1), proc.stdout


def _log(run_dir: Path, job_id: str) -> str:
    path = run_dir / "logs" / f"tiny-{job_id}.out"
    return path.read_text(errors="replace") if path.is_file() else "(no log yet)"


def test_sbatch_job_completes_with_metrics_and_checkpoint(slurm, workdir):
    job_id, out = _submit(slurm, workdir, [*FAST, "run.dir=done"])
    run_dir = workdir / "done"
    assert f"logs: {run_dir}/logs/tiny-<jobid>.out" in out and "run dir" in out
    info = slurm.wait_done(job_id, timeout=240)
    log = _log(run_dir, job_id)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{log}\n{slurm.logs()}"
    assert "2 task(s)" in log and "world 2" in log  # one SLURM task per rank
    assert [r["step"] for r in read_metrics(run_dir / "pretrain")] == [1, 2, 3, 4, 5, 6]
    assert (run_dir / "pretrain" / "checkpoints" / "iter_0000006" / "complete.json").is_file()
    assert (run_dir / "pretrain" / "done.json").is_file()
    assert list((run_dir / "launch").glob("tiny-*.sbatch"))


def test_warning_signal_checkpoints_requeues_and_resumes(slurm, workdir):
    steps = 24
    args = [*FAST, f"trainer.max_steps={steps}", "run.dir=preempt"]
    job_id, _ = _submit(slurm, workdir, args)
    run_dir = workdir / "preempt"
    metrics = run_dir / "pretrain" / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline:  # signal once a couple of steps are done: mid-run
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        assert slurm.job(job_id).get("JobState") in ("PENDING", "RUNNING", "CONFIGURING"), _log(run_dir, job_id)
        time.sleep(0.2)
    else:
        pytest.fail(f"no training step within 180 s:\n{_log(run_dir, job_id)}")
    # What `#SBATCH --signal=B:USR1@N` does before the time limit: signal the batch script.
    slurm.run(["scancel", "--batch", "--signal=USR1", job_id])

    info = slurm.wait_done(job_id, timeout=300)
    log = _log(run_dir, job_id)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{log}\n{slurm.logs()}"
    assert info["Restarts"] == "1", f"{info}\n{log}"
    stopped = re.search(r"stopped after step (\d+) of 'pretrain' with checkpoint (\S+);", log)
    assert stopped, log
    saved = int(stopped.group(1))
    assert 2 <= saved < steps, log
    assert Path(stopped.group(2)).name == f"iter_{saved:07d}"
    assert f"requeueing job {job_id}" in log
    assert f"(step {saved}, " in log.split("restart 1")[1], log  # the requeued job resumed from it
    got = [r["step"] for r in read_metrics(run_dir / "pretrain")]
    assert got == list(range(1, steps + 1)), got  # no step lost or repeated
    assert json.loads((run_dir / "pretrain" / "done.json").read_text())["max_steps"] == steps
    assert not (run_dir / "preempted.json").exists()  # the requeued job cleared the marker
