"""The distill step's config rules, and its loss on real Megatron models in one process.

A student equal to its teacher has a logit KL of zero at the first step; a narrower, shallower
student with a hidden-state loss (a trained projection 32 -> 64) lowers its KL over a few steps on a
fixed batch, and its projection rides with the checkpoint. The TP=2 parity of the same numbers is
in tests/distributed/test_distill_parity.py, resume in tests/e2e/test_distill.py.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import pytest
import torch

from nemo_reason.config.errors import ConfigError
from tests.unit.megatron_env import megatron_single  # noqa: F401

VOCAB = 260
GLOBAL, MBS, SEQ = 4, 2, 16
# A wide initialisation gives the untrained teacher peaked logits: a KL far from 0 to learn.
TEACHER = ["model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=128", "model.init_method_std=0.3"]
STUDENT = ["model.num_layers=1", "model.hidden_size=32", "model.ffn_hidden_size=64", "model.num_attention_heads=2",
           "model.num_query_groups=2"]


def _step(**kw):
    from nemo_reason.stages import load_builtin_steps
    from nemo_reason.stages.distill import DistillConfig

    load_builtin_steps()
    return DistillConfig(type="distill", **kw)


def test_config_rules():
    from nemo_reason.config.store import compose

    for kw, msg in [({"temperature": 0.0}, "temperature"), ({"kl_weight": -1.0}, "kl_weight"),
                    ({"kl_weight": 0.0}, "all 0"), ({"hidden_weight": 1.0, "hidden_layers": []}, "hidden_layers")]:
        with pytest.raises(ConfigError, match=msg):
            _step(**kw).validate()
    _step(hidden_weight=0.5, lm_weight=0.5).validate()
    with pytest.raises(ConfigError, match="no teacher"):
        compose("tiny", ["pipeline=[{type: pretrain},{type: distill}]"])
    with pytest.raises(ConfigError, match="not an earlier step"):
        compose("tiny", ["pipeline=[{type: distill, teacher: late},{type: pretrain, name: late}]"])
    with pytest.raises(ConfigError, match="pipeline parallelism"):
        compose("tiny", ["pipeline=[{type: pretrain},{type: distill, teacher: pretrain}]", "parallel.pp=2",
                         "launcher.nproc_per_node=2"])
    cfg = compose("tiny", ["pipeline=[{type: pretrain},{type: distill, teacher: pretrain, temperature: 2.0}]"])
    assert cfg.pipeline[1].teacher == "pretrain" and cfg.pipeline[1].temperature == 2.0


def batch() -> list:
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(1, VOCAB, (GLOBAL, SEQ), generator=g)
    mask = torch.ones(GLOBAL, SEQ)
    mask[:, :3] = 0.0
    b = {"tokens": tokens, "labels": torch.roll(tokens, -1, dims=1), "loss_mask": mask,
         "position_ids": torch.arange(SEQ).expand(GLOBAL, SEQ).contiguous()}
    return [{k: v[i:i + MBS] for k, v in b.items()} for i in range(0, GLOBAL, MBS)]


def distill_steps(tp: int, world: int, init: Path, steps: int, same: bool = False, hidden: float = 0.5,
                  dp_rank: int = 0, dp: int = 1, resave: bool = False) -> list:
    """``steps`` optimizer steps of the real distill state (teacher, wrapper, DDP, optimizer) on the
    fixed batch, from the weights in ``init/teacher`` and ``init/student`` (written by the first
    caller). Returns the metrics and grad norm of each step."""
    from nemo_reason.backend import dist as bdist
    from nemo_reason.checkpoint import io as ckpt
    from nemo_reason.compress.distill import distill_forward_step
    from nemo_reason.config.store import compose
    from nemo_reason.parallel import ParallelDims
    from nemo_reason.stages import StepContext
    from nemo_reason.stages.distill import build_distill_states
    from nemo_reason.training.state import build_train_state
    from nemo_reason.training.step import train_step

    base = [f"parallel.tp={tp}", f"launcher.nproc_per_node={world}", f"trainer.global_batch_size={GLOBAL}",
            f"trainer.micro_batch_size={MBS}", f"trainer.seq_length={SEQ}", "optim.lr=1e-2", "optim.warmup_steps=0",
            "optim.schedule=constant", "run.resume=false"]
    dims = ParallelDims.from_config(compose("tiny", base).parallel, world) if world > 1 else None
    if dims is not None:
        dims.init()
    try:
        with tempfile.TemporaryDirectory() as d:
            ctx_dims = dims or ParallelDims(1, 1, 1, 1, None, None, 1)
            ctx = StepContext(dims=ctx_dims, run_dir=Path(d), step_dir=Path(d), step_name="distill")
            for name, over in (("teacher", TEACHER), ("student", STUDENT)):
                if not (init / name / "iter_0000000").exists():
                    cfg = compose("tiny", [*over, *base])
                    bdist.seed_everything(7 if name == "teacher" else 8)
                    s = build_train_state(cfg, ctx, VOCAB)
                    ckpt.save(init / name, 0, 0, s.model, s.optimizer, s.scheduler, "{}", bdist.get_rng_state(),
                              meta={"model": dataclasses.asdict(s.cfg.model)})
            cfg = compose("tiny", [*TEACHER, *base])
            bdist.seed_everything(cfg.run.seed)
            step = _step(teacher="x", hidden_weight=hidden, lm_weight=0.25)
            t_ckpt = init / "teacher" / "iter_0000000"
            state, teacher = build_distill_states(cfg, ctx, VOCAB, step, t_ckpt if same else
                                                  init / "student" / "iter_0000000", t_ckpt)
            micro = batch()
            micro = micro[dp_rank * len(micro) // dp:(dp_rank + 1) * len(micro) // dp]
            out = []
            for _ in range(steps):
                r = train_step(state, distill_forward_step, iter(micro), len(micro), SEQ, MBS)
                assert r.update_ok
                out.append({**r.metrics, "grad_norm": r.grad_norm})
            if resave:  # the projection is in the step's checkpoint, and reloads
                path = ckpt.save(Path(d) / "checkpoints", state.step, 0, state.model, state.optimizer,
                                 state.scheduler, "{}", bdist.get_rng_state(),
                                 meta={"model": dataclasses.asdict(state.cfg.model)})
                keys = set(state.model[0].module.sharded_state_dict().keys())
                out.append({"keys": sorted(keys), "path": str(path)})
                again, _ = build_distill_states(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume=True)),
                                                ctx, VOCAB, step, init / "student" / "iter_0000000", t_ckpt)
                w0 = dict(state.model[0].module.named_parameters())
                w1 = dict(again.model[0].module.named_parameters())
                out.append({"same_weights": all(torch.equal(w0[k], w1[k]) for k in w0 if w0[k].requires_grad),
                            "resumed": again.resumed_from is not None})
            return out
    finally:
        if dims is not None:
            ParallelDims.destroy()


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("distill_init")


def test_student_equal_to_teacher_has_zero_kl(megatron_single, init_dir):  # noqa: F811
    r = distill_steps(1, 1, init_dir, 1, same=True, hidden=0.5)
    assert r[0]["kd_loss"] < 1e-6, r
    assert r[0]["hidden_loss"] < 1e-6, r  # same width: identity projection, cosine 1
    assert r[0]["lm loss"] > 4.0  # a real CE of an untrained model (log 260 = 5.56)


def test_smaller_student_learns_the_teacher(megatron_single, init_dir):  # noqa: F811
    r = distill_steps(1, 1, init_dir, 6, hidden=0.5, resave=True)
    kd = [m["kd_loss"] for m in r[:6]]
    assert kd[0] > 0.1 and kd[-1] < 0.8 * kd[0] and kd == sorted(kd, reverse=True), kd
    assert r[5]["hidden_loss"] < r[0]["hidden_loss"], r
    # distill_loss = kl + 0.5 hidden + 0.25 lm
    assert abs(r[0]["distill_loss"] - (r[0]["kd_loss"] + 0.5 * r[0]["hidden_loss"] + 0.25 * r[0]["lm loss"])) < 1e-5
    keys = r[6]["keys"]
    assert any(k.startswith("_loss_modules") for k in keys) and not any("teacher" in k for k in keys), keys
    assert r[7] == {"same_weights": True, "resumed": True}, r[7]
