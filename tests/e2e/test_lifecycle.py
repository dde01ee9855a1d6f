"""The default run, `nemo-reason run` with no recipe: the whole lifecycle of a tiny hybrid in one
pipeline (recipes/tiny_lifecycle.yaml), shortened to a few steps per step (tests/e2e/lifecycle_run.py).

- every registered step type runs in it, each from the previous step's checkpoint, with the numbers
  each is for (two data phases, SFT loss, GRPO reward and held-out pass@1 with the response length
  growing from math to code, about half the parameters pruned, distillation narrowing the loss gap to
  the teacher, pass@1 per domain);
- SIGKILL at any moment and the same command continues where it was, to the same final numbers as the
  uninterrupted run: in the default suite once, in the middle of the evaluation; in the `slow` test at
  seven points of one run across step types (a checkpoint save in pretraining, SFT training, a GRPO
  rollout, code-reward scoring in the sandbox, modelopt's pruning, a distillation save, evaluation's
  sampling), each training step killed after its first checkpoint so that it resumes from it;
- a changed field of a late step re-runs that step and its successors; the earlier ones are skipped.

The resume tests start from a copy of the shared run's folder with the steps from the kill point on
deleted: the steps it keeps are skipped (their fingerprints match: run.dir is not part of them, and
the checkpoints they hand on are recorded by absolute path), so only the rest runs again.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import read_metrics, run_cli
from tests.e2e.lifecycle_run import lifecycle_args

# Metrics that measure the machine, not the run: left out of "the same final numbers".
_TIMING = ("seconds", "time", "tokens_per_s", "mfu", "tflops", "step_time", "checkpoint", "eta")


def _numbers(d: dict) -> dict:
    return {k: v for k, v in d.items() if not any(t in k for t in _TIMING) and not isinstance(v, (dict, list))}


def final_numbers(run_dir: Path, names) -> dict:
    """Per step: its done.json metrics and every metrics.jsonl record (timings left out), and the
    evaluation's completions."""
    out = {}
    for name in names:
        d = run_dir / name
        done = json.loads((d / "done.json").read_text())
        out[name] = {"done": _numbers(done["metrics"])}
        if (d / "metrics.jsonl").is_file():
            out[name]["records"] = [_numbers(r) for r in read_metrics(d)]
        if (d / "eval_samples.jsonl").is_file():
            out[name]["samples"] = [(r.get("prompt"), r.get("completion"), r.get("score"))
                                    for r in map(json.loads, (d / "eval_samples.jsonl").read_text().splitlines())]
    return out


def assert_same_numbers(got, want, where="") -> None:
    if isinstance(want, dict):
        assert sorted(got) == sorted(want), (where, sorted(got), sorted(want))
        for k in want:
            assert_same_numbers(got[k], want[k], f"{where}/{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), (where, len(got), len(want))
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_numbers(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert (math.isnan(got) and math.isnan(want)) or abs(got - want) <= 1e-6 * max(1.0, abs(want)), (
            where, got, want)
    else:
        assert got == want, (where, got, want)


def _actions(stdout: str) -> dict:
    acts = {}
    for line in stdout.splitlines():
        if line.startswith("[nemo-reason] step ") and "' (" in line and "): " in line:
            acts[line.split("'")[1]] = line.split("): ", 1)[1]
    return acts


def copy_run(src: Path, dest: Path, keep: int, names) -> None:
    """``src`` copied to ``dest`` with the outputs of steps ``names[keep:]`` removed."""
    shutil.copytree(src, dest)
    for name in names[keep:]:
        shutil.rmtree(dest / name, ignore_errors=True)


def _children(pid: int) -> list:
    """Child processes of ``pid`` (started from any of its threads)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def kill_when(cwd: Path, args, log: Path, ready, what: str, timeout: float = 600) -> None:
    """Start ``nemo-reason ARGS``, SIGKILL it as soon as ``ready(pid)`` holds, and check it was killed
    then (not finished, not failed)."""
    with open(log, "a") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nemo_reason.cli", *args], cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, env=dict(os.environ))
    hit = False
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            if ready(proc.pid):
                os.kill(proc.pid, signal.SIGKILL)
                hit = True
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None and not hit:
            proc.kill()
        proc.wait()
    assert hit, f"the run ended (exit {proc.returncode}) before it was {what}: {log.read_text()[-3000:]}"


def _running(step_dir: Path) -> bool:
    return (step_dir / "attempt.json").is_file() and not (step_dir / "done.json").is_file()


def test_default_pipeline_runs_every_step_type(lifecycle_run):
    from nemo_reason.config.store import compose
    from nemo_reason.stages import load_builtin_steps

    run, names = lifecycle_run.run_dir, lifecycle_run.step_names
    assert "recipe tiny_lifecycle ->" in lifecycle_run.stdout  # no recipe named: the default
    pipeline = compose("tiny_lifecycle").pipeline
    steps = load_builtin_steps()
    # The package's own step types (a test elsewhere in the session may register one of its own).
    builtin = [n for n in steps.names() if getattr(steps.get(n), "__module__", "").startswith("nemo_reason.")]
    assert sorted({s.type for s in pipeline}) == sorted(builtin), "a step type is missing"
    done = {n: json.loads((run / n / "done.json").read_text()) for n in names}
    # Each step starts from the previous one's output (perplexity and eval hand their input on).
    for prev, name in zip(names, names[1:]):
        assert Path(done[name]["input"]["checkpoint"]) == Path(done[prev]["checkpoint"]).resolve(), name
    assert done["distill"]["input"]["teacher"]["checkpoint"] == str(Path(done["grpo_code"]["checkpoint"]).resolve())

    # Pretraining in two data phases; the loss falls.
    pre = read_metrics(run / "pretrain")
    assert [r["phase"] for r in pre] == ["broad"] * 4 + ["high_quality"] * 2
    assert pre[-1]["loss"] < pre[0]["loss"]
    assert "eval_loss" in read_metrics(run / "sft")[-1]
    # GRPO on math, then code, the response cap growing; reward and held-out pass@1 logged.
    caps = {}
    for name, domain in (("grpo_math", "math"), ("grpo_code", "code")):
        recs = read_metrics(run / name)
        assert all(f"reward/{domain}" in r and "response_length" in r for r in recs), recs[-1]
        assert f"heldout/{domain}/pass@1" in recs[-1]
        caps[domain] = next(s for s in pipeline if s.name == name).max_new_tokens
        assert max(r["response_length_max"] for r in recs) <= caps[domain]
    assert caps["code"] > caps["math"]
    # About half the parameters pruned; distillation narrows the loss gap to the teacher on the same
    # held-out batches (prune measured the teacher and the pruned model on them).
    prune = done["prune"]["metrics"]
    assert 0.35 < prune["params_ratio"] < 0.6, prune
    distilled = done["distilled_loss"]["metrics"]
    assert distilled["params"] == prune["params_after"]
    assert distilled["loss"] - prune["val_loss_before"] < prune["val_loss_after"] - prune["val_loss_before"], (
        distilled, prune)
    # Held-out pass@1 per domain of the final (distilled) model.
    ev = json.loads((run / "eval" / "eval.json").read_text())
    assert sorted(ev["domains"]) == ["code", "math", "mcq"]
    assert ev["checkpoint"] == done["distill"]["checkpoint"]


@pytest.fixture(scope="module")
def killed_in_eval(lifecycle_run, tmp_path_factory):
    """A copy of the shared run up to its last step, continued by the same command, SIGKILLed in the
    middle of the evaluation (a verifier worker process alive: math sampled, now scored; mcq and code
    not sampled yet), and run again to the end."""
    names = lifecycle_run.step_names
    cwd = tmp_path_factory.mktemp("lifecycle_killed")
    run_dir = cwd / "run"
    copy_run(lifecycle_run.run_dir, run_dir, names.index("eval"), names)
    ev = run_dir / "eval"
    kill_when(cwd, lifecycle_args(run_dir), cwd / "killed.log",
              lambda pid: _running(ev) and not (ev / "eval.json").exists() and bool(_children(pid)),
              "scoring in the eval step")
    assert not (ev / "done.json").exists()
    proc = run_cli(lifecycle_args(run_dir), cwd=cwd, timeout=600)
    return cwd, run_dir, proc


def test_killed_during_eval_resumes_to_the_same_numbers(lifecycle_run, killed_in_eval):
    _, run_dir, proc = killed_in_eval
    names = lifecycle_run.step_names
    acts = _actions(proc.stdout)
    assert all(acts[n].startswith("skipped") for n in names[:-1]), acts
    assert acts["eval"].startswith("resuming"), acts
    assert_same_numbers(final_numbers(run_dir, names), final_numbers(lifecycle_run.run_dir, names))


# The same semantics on a three-step pipeline stay in the default run (tests/e2e/test_step_resume.py);
# this whole-lifecycle version costs ~30 s more.
@pytest.mark.slow
def test_changed_late_step_reruns_it_and_its_successors_only(lifecycle_run, killed_in_eval):
    cwd, run_dir, _ = killed_in_eval
    names = lifecycle_run.step_names
    i = names.index("distill")
    proc = run_cli(lifecycle_args(run_dir, [f"++pipeline.{i}.temperature=2.0"]), cwd=cwd, timeout=600)
    acts = _actions(proc.stdout)
    assert sorted(acts) == sorted(names), acts
    assert all(acts[n].startswith("skipped") for n in names[:i]), acts
    assert acts["distill"].startswith("re-running") and "step.temperature: 1.0 -> 2.0" in acts["distill"], acts
    assert all(acts[n].startswith("re-running") and "input checkpoint changed" in acts[n] for n in names[i + 1:]), acts
    assert (run_dir / ".superseded").is_dir()


@pytest.mark.slow  # the shortened pipeline from nothing with seven kills and restarts (~3-4 min on 2 shared cores)
def test_killed_at_seven_points_across_step_types_resumes_to_the_same_numbers(lifecycle_run, tmp_path):
    names = lifecycle_run.step_names
    run_dir = tmp_path / "run"
    args = lifecycle_args(run_dir)
    log = tmp_path / "killed.log"

    def ckpts(step):
        return run_dir / step / "checkpoints"

    def complete(step, it):
        return (ckpts(step) / f"iter_{it:07d}" / "complete.json").is_file()

    # Each kill comes after the step's first checkpoint, so the resumed run continues from it.
    def saving(step, after):  # a checkpoint save in flight (its temporary folder), one complete before it
        return lambda pid: complete(step, after) and any(ckpts(step).glob(".tmp_iter_*"))

    def training(step, after):  # the step trains on past its first checkpoint
        return lambda pid: _running(run_dir / step) and complete(step, after)

    def rollout(pid):  # grpo_math's first checkpoint is complete: the next work is step 2's rollout
        return _running(run_dir / "grpo_math") and complete("grpo_math", 1)

    def scoring(pid):  # grpo_code past its first checkpoint, with a child process: the code sandbox
        return _running(run_dir / "grpo_code") and complete("grpo_code", 1) and bool(_children(pid))

    def pruning(pid):  # modelopt's work folder exists, the pruned checkpoint not yet
        return _running(run_dir / "prune") and (run_dir / "prune" / "minitron").is_dir() and \
            not ckpts("prune").exists()

    def sampling(pid):  # the eval step started, nothing written yet
        return _running(run_dir / "eval") and not (run_dir / "eval" / "eval.json").exists()

    points = [("pretrain", saving("pretrain", 3), "saving a pretraining checkpoint"),
              ("sft", training("sft", 2), "training SFT"),
              ("grpo_math", rollout, "in a math GRPO rollout"),
              ("grpo_code", scoring, "scoring code in the sandbox"),
              ("prune", pruning, "inside modelopt's pruning"),
              ("distill", saving("distill", 2), "saving a distillation checkpoint"),
              ("eval", sampling, "sampling the evaluation")]
    for step, ready, what in points:
        kill_when(tmp_path, args, log, ready, what)
        assert not (run_dir / step / "done.json").exists(), what
    proc = run_cli(args, cwd=tmp_path, timeout=900)
    assert "eval' (eval): resuming" in proc.stdout, proc.stdout[-3000:]
    assert_same_numbers(final_numbers(run_dir, names), final_numbers(lifecycle_run.run_dir, names))
    # Every interrupted training step resumed from its own checkpoint, not from its start.
    text = log.read_text() + proc.stdout
    for step in ("pretrain", "sft", "grpo_math", "grpo_code", "distill"):
        assert f"resumed from {ckpts(step)}/iter_" in text, (step, text[-4000:])
