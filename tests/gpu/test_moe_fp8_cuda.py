"""CUDA path of the parallelism issue: TE grouped-GEMM experts, fp8 recipes, the H100 MFU peak.
Skipped without CUDA (see tests/conftest.py)."""

import pytest

from tests.conftest import FAST, losses, read_metrics, run_cli


@pytest.mark.gpu
def test_moe_with_te_grouped_gemm_trains_like_local_experts(tmp_path):
    run_cli(["run", "tiny_moe", *FAST, "run.dir=te", "model.backend=te"], cwd=tmp_path)
    run_cli(["run", "tiny_moe", *FAST, "run.dir=local", "model.backend=local"], cwd=tmp_path)
    te, local = losses(tmp_path / "te" / "pretrain"), losses(tmp_path / "local" / "pretrain")
    for step in te:
        assert te[step] == pytest.approx(local[step], rel=3e-2)
    assert "moe/expert_load" in read_metrics(tmp_path / "te" / "pretrain")[-1]


@pytest.mark.gpu
@pytest.mark.parametrize("recipe", ["delayed", "tensorwise", "blockwise"])
def test_fp8_recipes_train_close_to_bf16(tmp_path, recipe):
    import torch

    if recipe == "blockwise" and torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("blockwise fp8 needs Hopper")
    fp8 = ["trainer.precision=fp8", f"trainer.fp8_recipe={recipe}"]
    if recipe != "delayed":
        fp8.append("trainer.fp8_first_last_layers_bf16=true")
    run_cli(["run", "tiny", *FAST, "run.dir=fp8", "model.backend=te", *fp8], cwd=tmp_path)
    run_cli(["run", "tiny", *FAST, "run.dir=bf16", "model.backend=te", "trainer.precision=bf16"], cwd=tmp_path)
    a, b = losses(tmp_path / "fp8" / "pretrain"), losses(tmp_path / "bf16" / "pretrain")
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=5e-2)
