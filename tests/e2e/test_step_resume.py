"""Step-level resume by content: a step is done when the fingerprint of its resolved config and its
input matches its marker. Changing a field of a step re-runs that step and every later one, and
nothing else; `nemo-reason run` says for each step what it does and why."""

from __future__ import annotations

import json

import pytest

from tests.conftest import losses, run_cli

# Two pretraining steps, the second continuing from the first one's checkpoint; small and fast.
ARGS = ["trainer.max_steps=2", "trainer.log_every=1", "trainer.eval_every=0", "trainer.progress=false",
        "model.num_layers=1", "data.num_documents=300", "data.phases=[]", "trainer.global_batch_size=4",
        "trainer.micro_batch_size=4", "trainer.seq_length=64", "run.dir=steps",
        "pipeline=[{type: pretrain, name: first},{type: pretrain, name: second, overrides: {optim.lr: 0.002}}]"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("step_resume")


def _actions(stdout: str) -> dict:
    out = {}
    for line in stdout.splitlines():
        if "[nemo-reason] step " in line and "' (pretrain): " in line:
            name = line.split("'")[1]
            out[name] = line.split("): ", 1)[1]
    return out


def test_unchanged_skips_changed_reruns_it_and_its_successors(workdir):
    first = run_cli(["run", "tiny", *ARGS], cwd=workdir)
    acts = _actions(first.stdout)
    assert acts["first"].startswith("running: first run") and acts["second"].startswith("running"), acts
    ref_second = losses(workdir / "steps" / "second")

    again = run_cli(["run", "tiny", *ARGS], cwd=workdir)
    acts = _actions(again.stdout)
    assert all(a.startswith("skipped: already done") for a in acts.values()), acts

    # A field of the second step only: the first is kept, the second re-runs, naming the field.
    changed = run_cli(["run", "tiny", *ARGS[:-1], ARGS[-1].replace("0.002", "0.001")], cwd=workdir)
    acts = _actions(changed.stdout)
    assert acts["first"].startswith("skipped"), acts
    assert acts["second"].startswith("re-running") and "optim.lr: 0.002 -> 0.001" in acts["second"], acts
    assert losses(workdir / "steps" / "second") != ref_second
    assert (workdir / "steps" / ".superseded").is_dir()  # the old outputs were set aside, not lost

    # A field both steps see: both re-run; the second because of its field and its new input.
    both = run_cli(["run", "tiny", *ARGS[:-1], ARGS[-1].replace("0.002", "0.001"), "optim.weight_decay=0.05"],
                   cwd=workdir)
    acts = _actions(both.stdout)
    assert acts["first"].startswith("re-running") and "optim.weight_decay: 0.1 -> 0.05" in acts["first"], acts
    assert acts["second"].startswith("re-running") and "input checkpoint changed" in acts["second"], acts
    done = json.loads((workdir / "steps" / "second" / "done.json").read_text())
    assert done["input"]["checkpoint"].endswith("first/checkpoints/iter_0000002")

    # Execution-only fields (logging, progress, layout switches) leave the fingerprint alone.
    quiet = run_cli(["run", "tiny", *ARGS[:-1], ARGS[-1].replace("0.002", "0.001"), "optim.weight_decay=0.05",
                     "trainer.log_every=2", "trainer.progress=true"], cwd=workdir)
    assert all(a.startswith("skipped") for a in _actions(quiet.stdout).values())
