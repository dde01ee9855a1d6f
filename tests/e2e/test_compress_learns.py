"""Compression learns, end to end on the CPU (seeded, a tinier sibling of recipes/tiny_hybrid_compress):
a teacher is pretrained, pruned to about half its parameters, then distilled from the teacher for N
steps. On the same held-out batches (``perplexity`` steps), the distilled student is closer to the
teacher's validation loss than both the pruned model before distillation and the same small
architecture trained from scratch on as many tokens (a second run, started alongside)."""

import json

import pytest

from tests.conftest import run_cli, start_cli

COMMON = ["trainer.log_every=5", "trainer.eval_every=0", "trainer.progress=false", "data.num_documents=600",
          "model.num_layers=2", "trainer.global_batch_size=8", "trainer.micro_batch_size=8", "trainer.seq_length=64",
          "run.seed=1234"]
N = 20  # distillation (and from-scratch) steps
PPL = "{type: perplexity, name: %s, batches: 4}"
SMALL = {"hidden_size": 64, "ffn_hidden_size": 256}
COMPRESS = ("pipeline=[{type: pretrain, name: teacher, overrides: {trainer.max_steps: 60, trainer.save_every: 60}},"
            + PPL % "teacher_loss" + ","
            "{type: prune, hidden_size: 64, ffn_hidden_size: 256, calibration_batches: 1, eval_batches: 4,"
            " layer_drop_loss: false}," + PPL % "pruned_loss" + ","
            "{type: distill, teacher: teacher, overrides: {trainer.max_steps: %d, trainer.save_every: %d,"
            " optim.warmup_steps: 3}}," % (N, N) + PPL % "distilled_loss" + "]")
# The pruned architecture (the prune step writes kv_channels and query groups out explicitly).
SCRATCH = ("pipeline=[{type: pretrain, name: scratch, overrides: {model.hidden_size: 64, model.ffn_hidden_size: 256,"
           " model.kv_channels: 32, trainer.max_steps: %d, trainer.save_every: %d, optim.warmup_steps: 3}}," % (N, N)
           + PPL % "scratch_loss" + "]")


def _loss(run_dir, step):
    return json.loads((run_dir / step / "metrics.json").read_text())["loss"]


@pytest.mark.slow  # two CLI runs side by side: 187 s on the shared 2 cores (109 s CPU), over the ~60 s budget
def test_distilled_student_is_closest_to_the_teacher(tmp_path):
    # Its own data cache: two runs building the same dataset index at once would race on its files.
    scratch = start_cli(["run", "tiny", *COMMON, SCRATCH, "run.dir=scratch"], cwd=tmp_path,
                        env={"NEMO_REASON_CACHE": str(tmp_path / "cache_scratch")})
    run_cli(["run", "tiny", *COMMON, COMPRESS, "run.dir=compress"], cwd=tmp_path, timeout=900)
    out, _ = scratch.communicate(timeout=900)
    assert scratch.returncode == 0, out[-4000:] if out else ""
    c, s = tmp_path / "compress", tmp_path / "scratch"
    teacher, pruned, distilled = (_loss(c, n) for n in ("teacher_loss", "pruned_loss", "distilled_loss"))
    from_scratch = _loss(s, "scratch_loss")
    prune = json.loads((c / "prune" / "metrics.json").read_text())
    assert 0.3 < prune["params_ratio"] < 0.6, prune["params_ratio"]  # 2 layers: the embeddings weigh most
    assert json.loads((s / "scratch_loss" / "metrics.json").read_text())["params"] == prune["params_after"]
    gap = {"pruned": pruned - teacher, "scratch": from_scratch - teacher, "distilled": distilled - teacher}
    assert abs(gap["distilled"]) < gap["pruned"] and abs(gap["distilled"]) < gap["scratch"], (teacher, gap)
