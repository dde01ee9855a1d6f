"""Checkpoints as a user meets them: re-running resumes bit-for-bit; a kill during a save never
leaves a checkpoint that looks complete, and the next run resumes from the newest complete one."""

import os
import signal
import time

import pytest

from tests.conftest import FAST, losses, read_metrics, run_cli, start_cli


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("resume")


@pytest.fixture(scope="module")
def uninterrupted(tiny_fast_baseline):
    return tiny_fast_baseline  # `nemo-reason run tiny *FAST` in one process, once per session (conftest)


def test_rerun_resumes_and_matches_uninterrupted(workdir, uninterrupted):
    args = ["run", "tiny", *FAST, "run.dir=stop"]
    run_cli(args + ["trainer.exit_interval=4"], cwd=workdir)
    step_dir = workdir / "stop" / "pretrain"
    assert sorted(losses(step_dir)) == [1, 2, 3, 4]
    proc = run_cli(args, cwd=workdir)
    assert "resumed from" in proc.stdout
    got = losses(step_dir)
    assert sorted(got) == sorted(uninterrupted)
    for step, ref in uninterrupted.items():
        assert abs(got[step] - ref) <= 1e-6 * abs(ref), (step, got[step], ref)
    # The tiny recipe trains in two data phases: 0.6 x 6 steps rounds to 4, so the stop at step 4 is
    # exactly at the boundary and the resumed run starts the second phase.
    assert [r["phase"] for r in read_metrics(step_dir)] == ["broad"] * 4 + ["high_quality"] * 2
    assert "data phase 1 (broad) -> 2 (high_quality) at step 4 (tokens 8,192)" in proc.stdout
    # The resolved config travels with each checkpoint.
    ckpt = step_dir / "checkpoints" / "iter_0000006"
    assert (ckpt / "config.yaml").read_text().count("max_steps: 6") == 1
    # A finished pipeline is not redone.
    again = run_cli(args, cwd=workdir)
    assert "already done" in again.stdout


def test_kill_during_save_leaves_no_complete_looking_checkpoint(workdir, uninterrupted):
    args = [*FAST, "run.dir=killed", "trainer.save_every=1", "trainer.keep_last=0"]
    ckpts = workdir / "killed" / "pretrain" / "checkpoints"
    proc = start_cli(["run", "tiny", *args], cwd=workdir, output=False)
    killed_during_save = False
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            tmp = list(ckpts.glob(".tmp_iter_*")) if ckpts.is_dir() else []
            done = list(ckpts.glob("iter_*")) if ckpts.is_dir() else []
            if tmp and done:  # a save in flight, after at least one finished
                os.kill(proc.pid, signal.SIGKILL)
                killed_during_save = True
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert killed_during_save, "the run finished before a save could be interrupted"
    from nemo_reason.checkpoint.io import MARKER, find_latest

    for d in ckpts.glob("iter_*"):
        assert (d / MARKER).is_file(), f"{d} looks like a checkpoint but is incomplete"
    newest = find_latest(ckpts)
    assert newest is not None
    resumed_from = int(newest.name.split("_")[1])
    proc2 = run_cli(["run", "tiny", *args], cwd=workdir)
    assert f"(step {resumed_from}," in proc2.stdout
    got = losses(workdir / "killed" / "pretrain")
    for step, ref in uninterrupted.items():
        assert abs(got[step] - ref) <= 1e-6 * abs(ref), (step, got[step], ref)
    assert not list(ckpts.glob(".tmp_iter_*")), "leftover partial save was not cleaned"


# bf16 matmuls are slow on CPU (~60 s for three runs): run with -m slow.
@pytest.mark.slow
def test_bf16_runs_through_float16_module_and_resumes_exactly(workdir):
    """bf16: Megatron's Float16Module + Float16Optimizer (fp32 master weights), saved and resumed."""
    # bf16 matmuls are slow on CPU: a 1-layer model on short sequences.
    args = ["run", "tiny", *FAST, "trainer.max_steps=4", "trainer.precision=bf16", "model.num_layers=1",
            "trainer.seq_length=32"]
    run_cli(args + ["run.dir=bf16_full"], cwd=workdir)
    run_cli(args + ["run.dir=bf16_stop", "trainer.exit_interval=2"], cwd=workdir)
    proc = run_cli(args + ["run.dir=bf16_stop"], cwd=workdir)
    assert "resumed from" in proc.stdout
    full, resumed = losses(workdir / "bf16_full" / "pretrain"), losses(workdir / "bf16_stop" / "pretrain")
    assert sorted(full) == sorted(resumed) == [1, 2, 3, 4]
    for step in full:
        assert abs(full[step] - resumed[step]) <= 1e-6 * abs(full[step]), (step, full[step], resumed[step])
    assert full[4] < full[1]
