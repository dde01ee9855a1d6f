"""CUDA path: Transformer Engine specs, nccl, and parity of the te and local backends.
Skipped without CUDA (see tests/conftest.py)."""

import pytest

from tests.conftest import FAST, losses, run_cli


@pytest.mark.gpu
def test_auto_selects_te_on_cuda():
    from nemo_reason.backend import select, te_importable

    assert select("auto") == ("te" if te_importable() else "local")


@pytest.mark.gpu
def test_te_and_local_backends_train_alike(tmp_path):
    run_cli(["run", "tiny", *FAST, "run.dir=te", "model.backend=te"], cwd=tmp_path)
    run_cli(["run", "tiny", *FAST, "run.dir=local", "model.backend=local"], cwd=tmp_path)
    te, local = losses(tmp_path / "te" / "pretrain"), losses(tmp_path / "local" / "pretrain")
    for step in te:
        assert te[step] == pytest.approx(local[step], rel=2e-2)


@pytest.mark.gpu
def test_bf16_tp2_on_gpus(tmp_path):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    run_cli(["run", "tiny", *FAST, "trainer.precision=bf16", "parallel.tp=2", "launcher.nproc_per_node=2"],
            cwd=tmp_path)
