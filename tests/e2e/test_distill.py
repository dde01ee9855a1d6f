"""``distill`` as a user runs it: a pipeline that trains a teacher, makes a smaller student, and
distills it (kd_loss falls, metrics reported); a distill run stopped half-way and re-run resumes
to the same numbers as the uninterrupted one (teacher rebuilt from its checkpoint, the student's
projection and optimizer from the step's)."""

from pathlib import Path

import pytest

from tests.conftest import read_metrics, run_cli

COMMON = ["trainer.max_steps=4", "trainer.log_every=1", "trainer.eval_every=0", "trainer.save_every=0",
          "trainer.progress=false", "model.num_layers=2", "data.num_documents=600"]
DISTILL = "{type: distill, teacher: %s, hidden_weight: 0.5, lm_weight: 0.1, overrides: {trainer.max_steps: 6}}"
PIPELINE = ("pipeline=[{type: pretrain, name: teacher},"
            "{type: pretrain, name: student, overrides: {model.num_layers: 1, model.hidden_size: 64, "
            "model.ffn_hidden_size: 128, trainer.max_steps: 2}}," + DISTILL % "teacher" + "]")


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("distill")
    proc = run_cli(["run", "tiny", *COMMON, PIPELINE, "run.dir=full"], cwd=cwd)
    return cwd, proc


def test_pipeline_distills_a_smaller_student(pipeline_run):
    cwd, proc = pipeline_run
    recs = read_metrics(cwd / "full" / "distill")
    assert [r["step"] for r in recs] == list(range(1, 7))
    kd = [r["kd_loss"] for r in recs]
    assert kd[-1] < kd[0], kd
    assert all(k in recs[0] for k in ("loss", "hidden_loss", "distill_loss")), recs[0]
    assert "model architecture from" in proc.stdout and "teacher " in proc.stdout


@pytest.mark.slow  # three more CLI runs (~70 s CPU); the default suite keeps the pipeline test
def test_resumed_distill_equals_uninterrupted(pipeline_run):
    cwd, _ = pipeline_run
    full = cwd / "full"
    student = full / "student" / "checkpoints" / "iter_0000002"
    teacher = full / "teacher" / "checkpoints"  # a folder of checkpoints: its newest
    args = ["run", "tiny", *COMMON, "pipeline=[" + DISTILL % teacher + "]", f"run.init_checkpoint={student}",
            "run.dir=stop"]
    run_cli(args + ["trainer.exit_interval=3"], cwd=cwd)
    assert [r["step"] for r in read_metrics(cwd / "stop" / "distill")] == [1, 2, 3]
    proc = run_cli(args, cwd=cwd)
    assert "resuming" in proc.stdout and "resumed from" in proc.stdout
    want = {r["step"]: r for r in read_metrics(full / "distill")}
    got = {r["step"]: r for r in read_metrics(cwd / "stop" / "distill")}
    assert sorted(got) == sorted(want)
    for step, w in want.items():
        for k in ("kd_loss", "hidden_loss", "loss", "grad_norm"):
            assert abs(got[step][k] - w[k]) <= 1e-6 * abs(w[k]), (step, k, got[step][k], w[k])
