"""Every parallel dimension computes the same function as one process (issue #4's parity matrix).

Each layout trains 5 steps (fp32, gloo, real processes) from the same initial weights as the
single-process baseline of its model: the baseline saves its initial model (``trainer.save_initial``)
and every layout starts from it with ``run.init_checkpoint`` (resharded by Megatron's
dist_checkpointing), so a difference in the losses is a difference in the computation.

Process start-up is shared: one set of processes per world size (``tests/spawn.py``) runs all its
layouts in turn (``parity_worker.py``): world 1 (baselines), world 2 (each dimension alone), world 4
(combinations).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import assert_losses_close, losses
from tests.distributed.parity_worker import run_cases
from tests.spawn import SpawnError, spawn

STEPS = 5
COMMON = [f"trainer.max_steps={STEPS}", "trainer.log_every=1", "trainer.eval_every=0", "trainer.save_every=0",
          "trainer.progress=false", "trainer.micro_batch_size=2", "trainer.global_batch_size=8",
          "trainer.seq_length=64", "data.num_documents=600", "optim.warmup_steps=1"]

# model -> (recipe, overrides): small enough that a layout trains in seconds, deep enough for PP x VPP.
MODELS = {
    "dense": ("tiny", ["model.num_layers=4", "model.hidden_size=64", "model.ffn_hidden_size=128"]),
    "moe": ("tiny_moe", []),
    # Token dropping (capacity factor 1) and aux-loss-free balancing (sigmoid scores + expert bias).
    "moe_capacity": ("tiny_moe", ["model.moe_expert_capacity_factor=1.0"]),
    "moe_bias": ("tiny_moe", ["model.moe_router_score_function=sigmoid", "model.moe_router_enable_expert_bias=true",
                              "model.moe_router_bias_update_rate=0.01", "model.moe_aux_loss_coeff=0.0",
                              "model.moe_router_load_balancing_type=none"]),
    "hybrid": ("tiny_hybrid", ["model.num_layers=4", "model.hybrid_pattern='M*M-'"]),
    # Nemotron-H with MoE layers (E) in the pattern.
    "hybrid_moe": ("tiny_hybrid", ["model.num_layers=4", "model.hybrid_pattern='M*ME'", "model.num_moe_experts=4",
                                   "model.moe_aux_loss_coeff=0.01"]),
}

SP = "parallel.sequence_parallel=true"
# Each dimension alone at size 2, for every model it applies to (plain 1F1B PP runs for MoE and hybrid
# here and for dense in TP2xPP2 below; DP for dense here, for MoE under EP2). TP runs with sequence parallelism
# (plain TP is covered by test_parity.py's torchrun run and test_hybrid_parity.py); MoE at EP=2 runs
# attention at DP=2 (and EP over the same ranks). Variants ride along on one case each: recompute
# with the distributed optimizer, token dropping with the allgather dispatcher.
WORLD2 = {
    "dense_tp2_sp": ("dense", ["parallel.tp=2", SP]),
    "dense_cp2": ("dense", ["parallel.cp=2"]),
    "dense_dp2_distopt_recompute": ("dense", ["optim.distributed=true", "trainer.recompute=full"]),
    "dense_pp2_vpp2": ("dense", ["parallel.pp=2", "parallel.vpp=2"]),
    "moe_ep2": ("moe", ["parallel.ep=2"]),
    "moe_capacity_ep2_allgather": ("moe_capacity", ["parallel.ep=2", "model.moe_token_dispatcher_type=allgather"]),
    "moe_bias_ep2": ("moe_bias", ["parallel.ep=2"]),
    "moe_tp2_sp": ("moe", ["parallel.tp=2", SP]),
    "moe_pp2": ("moe", ["parallel.pp=2"]),
    "hybrid_tp2_sp": ("hybrid", ["parallel.tp=2", SP]),
    "hybrid_cp2": ("hybrid", ["parallel.cp=2"]),
    "hybrid_pp2": ("hybrid", ["parallel.pp=2"]),
    "hybrid_moe_ep2": ("hybrid_moe", ["parallel.ep=2"]),
}
# Combinations at world size 4, MoE Parallel Folding among them: attention TP2 x DP2 while the
# experts run ETP1 x EP2 x EDP2.
WORLD4 = {
    "dense_tp2_pp2": ("dense", ["parallel.tp=2", "parallel.pp=2"]),
    "dense_tp2_cp2": ("dense", ["parallel.tp=2", "parallel.cp=2"]),
    "dense_dp2_pp2_vpp2_distopt": ("dense", ["parallel.pp=2", "parallel.vpp=2", "optim.distributed=true"]),
    "moe_tp2_ep2_etp1_folding": ("moe", ["parallel.tp=2", SP, "parallel.ep=2", "parallel.etp=1"]),
}


def _spawn(workdir: Path, world: int, cases: dict, base: Path | None) -> None:
    spec = []
    for name, (model, extra) in cases.items():
        recipe, model_over = MODELS[model]
        over = [*COMMON, *model_over, *extra]
        if base is None:
            over.append("trainer.save_initial=true")
        else:
            over.append(f"run.init_checkpoint={base / model / 'pretrain' / 'checkpoints' / 'iter_0000000'}")
        spec.append({"recipe": recipe, "overrides": over, "run_dir": str(workdir / name)})
    cases_file = workdir / f"cases_world{world}.json"
    cases_file.write_text(json.dumps(spec, indent=1))
    try:
        spawn(run_cases, world, args=(str(cases_file),), cwd=workdir, workdir=workdir / f"world{world}_logs",
              timeout=900)
    except SpawnError as exc:
        errors = sorted(workdir.glob("*/error_rank*.txt"))
        detail = errors[0].read_text() if errors else str(exc)[-6000:]
        raise AssertionError(f"world {world} layouts failed ({errors[0].parent.name if errors else '?'}):\n{detail}")


@pytest.fixture(scope="module")
def baselines(tmp_path_factory):
    base = tmp_path_factory.mktemp("layouts_base")
    _spawn(base, 1, {model: (model, []) for model in MODELS}, None)
    return base


@pytest.fixture(scope="module")
def world2(baselines, tmp_path_factory):
    out = tmp_path_factory.mktemp("layouts_w2")
    _spawn(out, 2, WORLD2, baselines)
    return out


@pytest.fixture(scope="module")
def world4(baselines, tmp_path_factory):
    out = tmp_path_factory.mktemp("layouts_w4")
    _spawn(out, 4, WORLD4, baselines)
    return out


def _check(out: Path, name: str, model: str, baselines: Path) -> None:
    ref = losses(baselines / model / "pretrain")
    assert len(ref) == STEPS and ref[STEPS] < ref[1], ref  # the baseline trains
    assert_losses_close(losses(out / name / "pretrain"), ref, 1e-4)


@pytest.mark.parametrize("name", sorted(WORLD2))
def test_size2_layout_matches_one_process(world2, baselines, name):
    _check(world2, name, WORLD2[name][0], baselines)


@pytest.mark.parametrize("name", sorted(WORLD4))
def test_world4_layout_matches_one_process(world4, baselines, name):
    _check(world4, name, WORLD4[name][0], baselines)


def test_moe_router_statistics_are_logged(world2, baselines):
    from tests.conftest import read_metrics

    for run in (baselines / "moe", world2 / "moe_ep2"):
        rec = read_metrics(run / "pretrain")[-1]
        load = rec["moe/expert_load"]
        assert len(load) == 4 and abs(sum(load) - 1.0) < 1e-3, load
        assert rec["moe/load_balancing_loss"] > 0 and rec["moe/z_loss"] > 0
    # The same tokens are routed the same way whether the experts are split over ranks or not.
    one = read_metrics(baselines / "moe" / "pretrain")[-1]["moe/expert_load"]
    ep2 = read_metrics(world2 / "moe_ep2" / "pretrain")[-1]["moe/expert_load"]
    assert max(abs(a - b) for a, b in zip(one, ep2)) < 1e-3, (one, ep2)
