"""Real multi-process runs (gloo, spawned by `nemo-reason run`, torchrun) against one process.

Each run is the CLI as a user types it; the losses come from metrics.jsonl. The layout matrix
itself (every dimension against one process) is tests/distributed/test_layouts.py; this module
covers the ways of starting ranks and checkpoints crossing layouts: a torchrun start whose TP=2
checkpoint continues at TP=1, and a distributed-optimizer checkpoint saved at DP=2 resumed at TP=2.
"""

import pytest

from tests.conftest import assert_losses_close, FAST, losses, run_cli
from tests.spawn import torchrun


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("parity")


@pytest.fixture(scope="module")
def baseline(tiny_fast_baseline):
    return tiny_fast_baseline  # `nemo-reason run tiny *FAST` in one process, once per session (conftest)


def test_baseline_learns(baseline):
    assert baseline[6] < baseline[1] - 0.3  # 6 steps from ln(vocab) with the BPE tokenizer


@pytest.fixture(scope="module")
def torchrun_tp2(workdir):
    """Started by torchrun (as a cluster script would), `nemo-reason run` runs as that rank; the
    TP=2 run stops at step 3 (trainer.exit_interval) with a checkpoint."""
    return torchrun(["-m", "nemo_reason.cli", "run", "tiny", *FAST, "run.dir=tp2_then_tp1", "parallel.tp=2",
                     "launcher.nproc_per_node=2", "trainer.exit_interval=3"], 2, cwd=workdir, timeout=600)


def test_under_torchrun_each_process_is_a_rank(workdir, baseline, torchrun_tp2):
    assert "tp=2" in torchrun_tp2.stdout and "exit_interval reached at step 3" in torchrun_tp2.stdout
    got = losses(workdir / "tp2_then_tp1" / "pretrain")
    assert_losses_close({s: got[s] for s in (1, 2, 3)}, {s: baseline[s] for s in (1, 2, 3)}, 1e-4)


def test_checkpoint_saved_at_tp2_continues_at_tp1(workdir, baseline, torchrun_tp2):
    proc = run_cli(["run", "tiny", *FAST, "run.dir=tp2_then_tp1"], cwd=workdir)
    assert "resumed from" in proc.stdout and "tp=1" in proc.stdout
    assert_losses_close(losses(workdir / "tp2_then_tp1" / "pretrain"), baseline, 1e-4)


# Two CLI runs (~45 s); DP=2 distributed-optimizer parity itself is in test_layouts.py. Run with -m slow.
@pytest.mark.slow
def test_distributed_optimizer_resume_reshards(workdir, baseline):
    """Stopped at DP=2 (optimizer states sharded over DP), resumed at TP=2 x DP=1: the distributed
    optimizer's states, the scheduler and the sample position carry over (fully_reshardable)."""
    args = ["run", "tiny", *FAST, "run.dir=distopt", "launcher.nproc_per_node=2", "optim.distributed=true"]
    first = run_cli(args + ["trainer.exit_interval=3"], cwd=workdir)
    assert "exit_interval reached at step 3" in first.stdout
    assert not (workdir / "distopt" / "pretrain" / "done.json").exists()
    second = run_cli(args + ["parallel.tp=2"], cwd=workdir)
    assert "resumed from" in second.stdout and "(step 3," in second.stdout and "tp=2" in second.stdout
    assert_losses_close(losses(workdir / "distopt" / "pretrain"), baseline, 1e-4)
