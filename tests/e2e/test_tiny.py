"""The dense pretraining job: `nemo-reason run tiny` (the default recipe until the whole lifecycle,
tiny_lifecycle, took its place; tests/e2e/test_lifecycle.py)."""

import json
from pathlib import Path

import pytest

from tests.conftest import read_metrics, run_cli

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "tiny_losses.json"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("tiny")
    proc = run_cli(["run", "tiny"], cwd=cwd)
    return cwd, proc


def test_tiny_learns_below_unigram_entropy(tiny_run):
    cwd, proc = tiny_run
    step_dir = cwd / "runs" / "tiny" / "pretrain"
    records = read_metrics(step_dir)
    assert [r["step"] for r in records] == list(range(10, 201, 10))
    from nemo_reason.data import indexed
    stats = None
    for line in proc.stdout.splitlines():
        if "unigram entropy" in line:
            stats = float(line.split("unigram entropy")[1].split()[0])
    assert stats is not None
    final = records[-1]
    assert final["loss"] < 0.5 * stats, (final["loss"], stats)
    assert final["eval_loss"] < 0.5 * stats
    for key in ("lr", "grad_norm", "tokens_per_s", "model_tflops_per_s_per_rank", "mfu", "consumed_samples"):
        assert key in final and final[key] > 0
    assert final["mfu"] < 1.5  # against the measured CPU peak: well below 1 (1.5 leaves room for noise)


def test_tiny_writes_what_a_user_looks_for(tiny_run):
    cwd, proc = tiny_run
    step_dir = cwd / "runs" / "tiny" / "pretrain"
    assert list((step_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (cwd / "runs" / "tiny" / "config.yaml").is_file()
    ckpts = sorted(p.name for p in (step_dir / "checkpoints").glob("iter_*"))
    assert ckpts == ["iter_0000100", "iter_0000200"]
    assert (step_dir / "checkpoints" / "iter_0000200" / "config.yaml").is_file()
    assert json.loads((step_dir / "done.json").read_text())["max_steps"] == 200
    assert "step 200/200" in proc.stdout and "ETA" in proc.stdout and "tok/s" in proc.stdout


def test_tiny_switches_data_phase_at_the_token_boundary(tiny_run):
    """Two phases, 0.6 / 0.4 of 200 steps x 16 x 128 tokens: the switch follows step 120."""
    cwd, proc = tiny_run
    phases = {r["step"]: r["phase"] for r in read_metrics(cwd / "runs" / "tiny" / "pretrain")}
    assert {s for s, p in phases.items() if p == "broad"} == set(range(10, 121, 10))
    assert {s for s, p in phases.items() if p == "high_quality"} == set(range(130, 201, 10))
    assert "data phase 1 (broad) -> 2 (high_quality) at step 120 (tokens 245,760)" in proc.stdout


def test_tiny_matches_golden_losses(tiny_run):
    """Catches silent numeric changes in the default recipe (same CPU kind as CI)."""
    cwd, _ = tiny_run
    got = {r["step"]: r["loss"] for r in read_metrics(cwd / "runs" / "tiny" / "pretrain")}
    if not GOLDEN.exists():
        pytest.skip("no golden file yet (write it with tests/assets/update_golden.py)")
    golden = {int(k): v for k, v in json.loads(GOLDEN.read_text()).items()}
    for step in (10, 20, 30, 40, 50):
        assert got[step] == pytest.approx(golden[step], rel=1e-3), step
