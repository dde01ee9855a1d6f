"""`nemo-reason launch tiny launcher=local` with 2 ranks: the preemption signal sent to the launch
command reaches the ranks, which checkpoint and stop (exit 75); launching again resumes from that
step with no step lost or repeated. Marked slow (two 2-rank runs): `pytest -m slow`."""

import os
import signal
import time

import pytest

from tests.conftest import FAST, read_metrics, run_cli, start_cli


@pytest.mark.slow
def test_local_launch_stops_on_signal_and_resumes(tmp_path):
    steps = 20
    args = ["launch", "tiny", "launcher=local", "launcher.nproc_per_node=2", *FAST,
            f"trainer.max_steps={steps}", "run.dir=loc"]
    proc = start_cli(args, cwd=tmp_path)
    metrics = tmp_path / "loc" / "pretrain" / "metrics.jsonl"
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
                os.kill(proc.pid, signal.SIGUSR1)
                break
            time.sleep(0.2)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, out[-4000:]
    assert "stopped after step" in out
    saved = len(read_metrics(tmp_path / "loc" / "pretrain"))
    assert saved < steps
    again = run_cli(args, cwd=tmp_path)
    assert f"(step {saved}, " in again.stdout
    assert [r["step"] for r in read_metrics(tmp_path / "loc" / "pretrain")] == list(range(1, steps + 1))
    assert len(list((tmp_path / "loc" / "logs").glob("tiny-local-*.log"))) >= 1
