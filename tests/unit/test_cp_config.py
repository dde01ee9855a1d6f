"""Context-parallel layouts: accepted where Megatron can run them, refused with the rule otherwise."""

import pytest

from nemo_reason.config.schema import ConfigError
from nemo_reason.config.store import compose


@pytest.mark.parametrize("recipe,overrides", [
    ("tiny", ["parallel.cp=2", "launcher.nproc_per_node=2"]),
    ("tiny", ["parallel.tp=2", "parallel.cp=2", "parallel.sequence_parallel=true", "launcher.nproc_per_node=4"]),
    ("tiny_hybrid", ["parallel.cp=2", "launcher.nproc_per_node=2"]),
    # One Mamba group per TP rank, shared by both CP ranks.
    ("tiny_hybrid", ["parallel.tp=2", "parallel.cp=2", "launcher.nproc_per_node=4"]),
])
def test_cp_layouts_validate(recipe, overrides):
    cfg = compose(recipe, overrides)
    assert cfg.parallel.cp == 2 and cfg.data_parallel_size == 1


@pytest.mark.parametrize("recipe,overrides,needle", [
    ("tiny", ["parallel.cp=4", "launcher.nproc_per_node=4", "trainer.seq_length=100"],
     "seq_length=100 is not divisible by 2 x cp = 8"),
    ("tiny", ["model.num_query_groups=4", "parallel.tp=4", "parallel.cp=2", "parallel.sequence_parallel=true",
              "launcher.nproc_per_node=8", "trainer.seq_length=68"],
     "seq_length / cp = 34 is not divisible by parallel.tp=4"),
    ("tiny_hybrid", ["parallel.tp=2", "parallel.cp=8", "launcher.nproc_per_node=16"],
     "Mamba heads per tensor-parallel rank (4) are not divisible by parallel.cp=8"),
    ("tiny_hybrid", ["model.mamba_num_heads=12", "model.mamba_num_groups=4", "parallel.cp=6",
                     "launcher.nproc_per_node=6"], "Mamba groups per tensor-parallel rank (4) and parallel.cp=6"),
])
def test_cp_layout_rules(recipe, overrides, needle):
    with pytest.raises(ConfigError) as e:
        compose(recipe, overrides)
    assert needle in str(e.value)
