"""Shared test setup: markers, an isolated data cache, and a helper that runs the CLI as a user would."""

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


def run_cli(args, cwd, timeout=600, check=True, env=None):
    """Run `nemo-reason ARGS` in a subprocess; returns CompletedProcess (stdout+stderr in .stdout)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "nemo_reason.cli", *args], cwd=cwd, env=full_env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"nemo-reason {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-6000:]}")
    return proc


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
