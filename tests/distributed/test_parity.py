"""Real multi-process runs (gloo, spawned by `nemo-reason run`) against one process.

Each run is the CLI as a user types it; the losses come from metrics.jsonl. Spawns are shared
through module-scoped fixtures: one single-process baseline, one TP=2, one DP=2 run.
"""

import pytest

from tests.conftest import assert_losses_close, FAST, losses, run_cli


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("parity")


@pytest.fixture(scope="module")
def baseline(workdir):
    run_cli(["run", "tiny", *FAST, "run.dir=base"], cwd=workdir)
    return losses(workdir / "base" / "pretrain")


@pytest.fixture(scope="module")
def dp2(workdir):
    run_cli(["run", "tiny", *FAST, "run.dir=dp2", "launcher.nproc_per_node=2", "optim.distributed=true"],
            cwd=workdir)
    return losses(workdir / "dp2" / "pretrain")


def test_baseline_learns(baseline):
    assert baseline[6] < baseline[1] - 1.0


def test_tp2_matches_tp1(workdir, baseline):
    proc = run_cli(["run", "tiny", *FAST, "run.dir=tp2", "parallel.tp=2", "launcher.nproc_per_node=2"], cwd=workdir)
    assert "tp=2" in proc.stdout
    assert_losses_close(losses(workdir / "tp2" / "pretrain"), baseline, 1e-4)


def test_under_torchrun_each_process_is_a_rank(workdir, baseline):
    """Started by torchrun (as a cluster script would), `nemo-reason run` runs as that rank."""
    import subprocess
    import sys

    from nemo_reason.launch.ports import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
           f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--rdzv-backend=c10d",
           "-m", "nemo_reason.cli", "run", "tiny", *FAST, "run.dir=torchrun", "parallel.tp=2",
           "launcher.nproc_per_node=2"]
    proc = subprocess.run(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert_losses_close(losses(workdir / "torchrun" / "pretrain"), baseline, 1e-4)


def test_dp2_distributed_optimizer_matches_one_process(baseline, dp2):
    assert_losses_close(dp2, baseline, 1e-4)


def test_distributed_optimizer_resume_equals_uninterrupted(workdir, dp2):
    args = ["run", "tiny", *FAST, "run.dir=dp2_resume", "launcher.nproc_per_node=2", "optim.distributed=true"]
    first = run_cli(args + ["trainer.exit_interval=3"], cwd=workdir)
    assert "exit_interval reached at step 3" in first.stdout
    assert not (workdir / "dp2_resume" / "pretrain" / "done.json").exists()
    second = run_cli(args, cwd=workdir)
    assert "resumed from" in second.stdout and "(step 3," in second.stdout
    assert_losses_close(losses(workdir / "dp2_resume" / "pretrain"), dp2, 1e-6)


def test_checkpoint_saved_at_tp2_continues_at_tp1(workdir, baseline):
    run_cli(["run", "tiny", *FAST, "run.dir=reshard", "parallel.tp=2", "launcher.nproc_per_node=2",
             "trainer.exit_interval=3"], cwd=workdir)
    proc = run_cli(["run", "tiny", *FAST, "run.dir=reshard"], cwd=workdir)
    assert "resumed from" in proc.stdout and "tp=1" in proc.stdout
    assert_losses_close(losses(workdir / "reshard" / "pretrain"), baseline, 1e-4)
