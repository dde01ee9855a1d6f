"""Step-level resume by content: a step is done when the fingerprint of its resolved config and its
input matches its marker. Changing a field of a step re-runs that step and every later one, and
nothing else; `nemo-reason run` says for each step what it does and why. A step that trains nothing
(perplexity) follows the same rule, and builds its model from what the checkpoint records."""

from __future__ import annotations

import json

import pytest

from tests.conftest import read_metrics, run_cli

# Two pretraining steps, the second continuing from the first one's checkpoint, then a perplexity
# measurement of the second's; small and fast. The last eval of `second` and the perplexity step
# read the same held-out samples (same split, seed, count), so their losses must agree.
PIPELINE = ("pipeline=[{type: pretrain, name: first},{type: pretrain, name: second, overrides: {optim.lr: LR}},"
            "{type: perplexity, name: ppl, batches: 2}]")
ARGS = ["trainer.max_steps=2", "trainer.log_every=1", "trainer.eval_every=2", "trainer.eval_iters=2",
        "trainer.progress=false", "model.num_layers=1", "data.num_documents=300", "data.phases=[]",
        "trainer.global_batch_size=4", "trainer.micro_batch_size=4", "trainer.seq_length=64", "run.dir=steps"]


def _run(workdir, lr="0.002", extra=()):
    proc = run_cli(["run", "tiny", *ARGS, PIPELINE.replace("LR", lr), *extra], cwd=workdir)
    acts = {}
    for line in proc.stdout.splitlines():
        if line.startswith("[nemo-reason] step ") and "/3 '" in line:
            acts[line.split("'")[1]] = line.split("): ", 1)[1]
    assert sorted(acts) == ["first", "ppl", "second"], proc.stdout[-3000:]
    return acts


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("step_resume")


def test_unchanged_skips_changed_reruns_it_and_its_successors(workdir):
    acts = _run(workdir)
    assert all(a.startswith("running: first run") for a in acts.values()), acts
    steps = workdir / "steps"
    # The perplexity step rebuilt the model and tokenizer from the checkpoint alone: same loss as the
    # training step's own last evaluation of that model.
    ppl = json.loads((steps / "ppl" / "done.json").read_text())["metrics"]
    eval_loss = read_metrics(steps / "second")[-1]["eval_loss"]
    assert abs(ppl["loss"] - eval_loss) <= 1e-6 * eval_loss, (ppl, eval_loss)
    first_done = (steps / "first" / "done.json").read_text()

    acts = _run(workdir)
    assert all(a.startswith("skipped: already done") for a in acts.values()), acts

    # A field of the second step only: the first is kept; the second and what follows re-run.
    acts = _run(workdir, lr="0.001")
    assert acts["first"].startswith("skipped"), acts
    assert acts["second"].startswith("re-running") and "optim.lr: 0.002 -> 0.001" in acts["second"], acts
    assert acts["ppl"].startswith("re-running") and "input checkpoint changed" in acts["ppl"], acts
    assert (steps / "first" / "done.json").read_text() == first_done
    assert (steps / ".superseded").is_dir()  # the old outputs were set aside, not lost

    # A field every step sees: all re-run, the first naming the field.
    acts = _run(workdir, lr="0.001", extra=["optim.weight_decay=0.05"])
    assert acts["first"].startswith("re-running") and "optim.weight_decay: 0.1 -> 0.05" in acts["first"], acts
    assert all(acts[s].startswith("re-running") for s in ("second", "ppl")), acts
    done = json.loads((steps / "second" / "done.json").read_text())
    assert done["input"]["checkpoint"].endswith("first/checkpoints/iter_0000002")

    # Execution-only fields (logging, progress, checkpoint cadence) leave every fingerprint alone.
    acts = _run(workdir, lr="0.001", extra=["optim.weight_decay=0.05", "trainer.log_every=2", "trainer.keep_last=1"])
    assert all(a.startswith("skipped") for a in acts.values()), acts
