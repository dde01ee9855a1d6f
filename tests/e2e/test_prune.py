"""The `prune` step as a user runs it: tiny_hybrid pretrained briefly, pruned by about half (group-aware
Mamba heads, head dim, FFN, hidden, depth), checked, and its self-describing checkpoint measured by
the next step with no model change; the same command again skips every finished step."""

from __future__ import annotations

import json

from tests.conftest import run_cli

ARGS = ["tiny_hybrid_prune", "trainer.max_steps=2", "trainer.log_every=1", "trainer.eval_every=0",
        "trainer.save_every=2", "trainer.progress=false", "data.num_documents=300", "data.phases=[]",
        "trainer.global_batch_size=8", "trainer.micro_batch_size=8", "trainer.seq_length=64", "run.dir=run",
        "pipeline=[{type: pretrain}, {type: prune, hidden_size: 96, ffn_hidden_size: 384, mamba_num_heads: 4, "
        "mamba_head_dim: 16, num_layers: 6, calibration_batches: 1, eval_batches: 1}, {type: perplexity, batches: 1}]"]


def test_pretrain_prune_then_measure_and_resume(tmp_path):
    proc = run_cli(["run", *ARGS], cwd=tmp_path, timeout=900)
    out = proc.stdout
    m = json.loads((tmp_path / "run" / "prune" / "metrics.json").read_text())
    assert 0.40 <= m["params_ratio"] <= 0.60, m
    assert m["params_after"] == m["params_planned"]
    assert m["max_logit_diff"] <= 1e-5 and m["val_loss_after"] > 0
    assert len(m["hybrid_pattern"]) == 6 and m["hybrid_pattern"].count("M") == 3
    imp = json.loads((tmp_path / "run" / "prune" / "importance.json").read_text())
    assert len(imp["layers"]) == 7 and imp["embedding_channels"]["size"] == 128
    mamba = [r for r in imp["layers"] if r["type"] == "M"]
    assert all(r["mamba_heads"]["kept"] == 4 and r["mamba_head_dim"]["kept"] == 16 for r in mamba)
    assert all(r["loss_increase"] is not None for r in imp["layers"])
    assert "1-cos" in out and "embedding channels: 128 -> 96" in out
    # The pruned checkpoint describes itself; the next step built the pruned model from it.
    meta = json.loads((tmp_path / "run" / "prune" / "checkpoints" / "iter_0000000" / "meta.json").read_text())
    assert meta["model"]["hidden_size"] == 96 and meta["model"]["mamba_head_dim"] == 16
    assert meta["params"] == m["params_after"] and meta["step_type"] == "prune"
    ppl = json.loads((tmp_path / "run" / "perplexity" / "metrics.json").read_text())
    assert ppl["params"] == m["params_after"] and ppl["loss"] > 0
    assert "model architecture from" in out or ppl["checkpoint"].endswith("iter_0000000")
    again = run_cli(["run", *ARGS], cwd=tmp_path, timeout=600).stdout
    assert again.count("skipped: already done") == 3, again[-3000:]
