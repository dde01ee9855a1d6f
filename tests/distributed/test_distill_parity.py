"""The distill loss and its update under TP=2 equal one process's, on a fixed batch.

Under TP the logits are vocab-sharded: the KL's softmax spans both shards (modelopt's all-reduced
denominators) and each rank's partial sum is all-reduced for its value only. Two optimizer steps
of the real distill state (teacher of 2 layers x 64, student of 1 layer x 32 with a trained
projection for the hidden-state loss): kd_loss, hidden_loss, lm loss and the gradient norm of both
steps agree with one process (the second only if the first update did). The initial weights are
the one-process run's checkpoints, loaded by both ranks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.spawn import spawn
from tests.unit.megatron_env import megatron_single  # noqa: F401
from tests.unit.test_distill import distill_steps

METRICS = ("kd_loss", "hidden_loss", "lm loss", "distill_loss", "grad_norm")


def _two_ranks(rank, init):
    from nemo_reason.backend import dist as bdist
    from nemo_reason.backend import prepare

    torch.set_num_threads(1)
    bdist.init_process_group()
    prepare("local")
    try:
        return distill_steps(2, 2, Path(init), 2)
    finally:
        bdist.destroy_process_group()


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("distill_parity_init")


def test_distill_under_tp2_equals_one_process(megatron_single, init_dir):  # noqa: F811
    want = distill_steps(1, 1, init_dir, 2)
    results = spawn(_two_ranks, 2, args=(str(init_dir),), timeout=300)
    got = results[0].value
    assert got == results[1].value  # ranks agree
    assert want[0]["kd_loss"] > 0.1, want
    for step, (g, w) in enumerate(zip(got, want)):
        for k in METRICS:
            assert abs(g[k] - w[k]) <= 1e-5 * max(1.0, abs(w[k])), (step, k, g[k], w[k])
