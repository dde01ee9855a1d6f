"""CUDA path of the hybrid model: Megatron's own MambaMixer with mamba-ssm/causal-conv1d kernels,
and checkpoints that move between it and the portable mixer. Skipped without CUDA."""

import pytest

from tests.conftest import losses, run_cli
from tests.distributed.test_hybrid_parity import HYBRID_FAST


@pytest.mark.gpu
def test_te_backend_uses_megatrons_mamba_mixer_when_kernels_import():
    from nemo_reason.backend import mamba_kernels_importable
    from nemo_reason.backend.specs import hybrid_stack_spec

    spec = hybrid_stack_spec("te")
    mixer = spec.submodules.mamba_layer.submodules.mixer.module
    if not mamba_kernels_importable():
        pytest.skip("mamba-ssm / causal-conv1d are not installed")
    from megatron.core.ssm.mamba_mixer import MambaMixer

    assert mixer is MambaMixer


@pytest.mark.gpu
def test_hybrid_checkpoint_moves_from_portable_to_kernels(tmp_path):
    """Train on the local backend (portable mixer), continue on te (Megatron's mixer + kernels)."""
    from nemo_reason.backend import mamba_kernels_importable, te_importable

    if not (te_importable() and mamba_kernels_importable()):
        pytest.skip("needs Transformer Engine, mamba-ssm and causal-conv1d")
    run_cli(["run", "tiny_hybrid", *HYBRID_FAST, "run.dir=ref", "model.backend=local"], cwd=tmp_path)
    run_cli(["run", "tiny_hybrid", *HYBRID_FAST, "run.dir=mixed", "model.backend=local",
             "trainer.exit_interval=3"], cwd=tmp_path)
    proc = run_cli(["run", "tiny_hybrid", *HYBRID_FAST, "run.dir=mixed", "model.backend=te"], cwd=tmp_path)
    assert "resumed from" in proc.stdout
    ref, mixed = losses(tmp_path / "ref" / "pretrain"), losses(tmp_path / "mixed" / "pretrain")
    for step in ref:
        assert mixed[step] == pytest.approx(ref[step], rel=2e-2), step
