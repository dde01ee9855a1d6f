"""Shared test setup: markers, an isolated data cache, the helper that runs the CLI as a user would,
and the baselines that several modules compare against, run once per session.

Rank processes that are not a CLI run start through ``tests/spawn.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA (skipped without it)")
    config.addinivalue_line("markers", "slow: longer than the default suite allows (run with -m slow)")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory):
    """One generated corpus per test session, outside the user's cache."""
    path = tmp_path_factory.mktemp("nemo_reason_cache")
    os.environ["NEMO_REASON_CACHE"] = str(path)
    return path


def _cli(args, env=None):
    full_env = dict(os.environ)
    # Drawing the end-of-run report's plots takes seconds per run: CLI runs here print its summary table
    # only (tests/e2e/test_report.py draws the page with `nemo-reason report`; env={"NEMO_REASON_REPORT":
    # "html"} asks a run for it).
    full_env.setdefault("NEMO_REASON_REPORT", "summary")
    full_env.update(env or {})
    return [sys.executable, "-m", "nemo_reason.cli", *args], full_env


def run_cli(args, cwd, timeout=600, check=True, env=None):
    """Run `nemo-reason ARGS` in a subprocess; returns CompletedProcess (stdout+stderr in .stdout)."""
    cmd, full_env = _cli(args, env)
    proc = subprocess.run(cmd, cwd=cwd, env=full_env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"nemo-reason {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-6000:]}")
    return proc


def start_cli(args, cwd, env=None, output=True) -> subprocess.Popen:
    """Start `nemo-reason ARGS` in the background, for a test that signals or kills it mid-run:
    stdout+stderr readable (text) from the Popen when `output`, discarded otherwise."""
    cmd, full_env = _cli(args, env)
    out = subprocess.PIPE if output else subprocess.DEVNULL
    return subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=out,
                            stderr=subprocess.STDOUT if output else subprocess.DEVNULL, text=True)


def read_metrics(step_dir: Path):
    return [json.loads(l) for l in (Path(step_dir) / "metrics.jsonl").read_text().splitlines() if l.strip()]


def losses(step_dir: Path):
    return {r["step"]: r["loss"] for r in read_metrics(step_dir)}


def assert_losses_close(got: dict, ref: dict, rel: float) -> None:
    """Same logged steps, and every loss within `rel` relative of the reference."""
    assert sorted(got) == sorted(ref), (sorted(got), sorted(ref))
    for step in ref:
        assert abs(got[step] - ref[step]) <= rel * abs(ref[step]), (step, got[step], ref[step])


# Small and fast: the tiny recipe, a few steps, a loss at every step, no eval.
FAST = ["trainer.max_steps=6", "trainer.log_every=1", "trainer.eval_every=0", "trainer.save_every=0",
        "trainer.progress=false", "model.num_layers=2", "data.num_documents=600"]


@pytest.fixture(scope="session")
def tiny_fast_baseline(tmp_path_factory):
    """Losses per step of ``nemo-reason run tiny *FAST`` in one process: the reference of the
    torchrun/reshard parity (tests/distributed/test_parity.py) and of resume (tests/e2e/test_resume.py).
    Run once per session, for whichever module asks first."""
    cwd = tmp_path_factory.mktemp("tiny_fast_baseline")
    run_cli(["run", "tiny", *FAST, "run.dir=base"], cwd=cwd)
    return dict(losses(cwd / "base" / "pretrain"))
