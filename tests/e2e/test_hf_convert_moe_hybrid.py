"""``nemo-reason import-hf`` / ``run`` / ``export-hf`` for the MoE and hybrid architectures, as typed.

A tiny random Qwen2-MoE (gated shared expert, un-normalised top-k routing) and a tiny Nemotron-H
(``M*M-``, 2 Mamba groups) go through the CLI: import with the parity gate, a 2-step SFT run started
from the import (the step adopts the checkpoint's architecture and tokenizer), and the run's
checkpoint exported in bf16, which transformers loads as the same class with the same routing.
Slow: several ``nemo-reason`` processes per architecture.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import read_metrics, run_cli
from tests.unit.hf_tiny import TINY, hf_folder, tiny_tokenizer

transformers = pytest.importorskip("transformers")


def _qwen2_moe():
    return transformers.Qwen2MoeConfig(**TINY, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=48,
                                       shared_expert_intermediate_size=80, norm_topk_prob=False)


def _nemotron_h():
    kinds = ["linear_attention", "full_attention", "linear_attention", "mlp"]
    return transformers.NemotronHConfig(**{**TINY, "num_hidden_layers": 4}, layers_block_type=kinds,
                                        ssm_state_size=16, mamba_num_heads=8, mamba_head_dim=16, n_groups=2,
                                        chunk_size=16, head_dim=16)


CASES = {
    "qwen2_moe": (_qwen2_moe, "Qwen2MoeForCausalLM"),
    "nemotron_h": (_nemotron_h, "NemotronHForCausalLM"),
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(CASES))
def test_import_run_export_from_the_command_line(tmp_path, arch):
    make, cls = CASES[arch]
    hf = hf_folder(tmp_path / arch, make(), tiny_tokenizer(tmp_path / "tok"))
    ckpt = tmp_path / "ckpt"
    proc = run_cli(["import-hf", str(hf), "--output", str(ckpt)], cwd=tmp_path)
    assert "parity (import of" in proc.stdout and (ckpt / "complete.json").is_file(), proc.stdout[-2000:]
    sft = ("{type: sft, sources: [bundled:math:40], skip_bad: true, eval_conversations: 8, "
           "overrides: {trainer.micro_batch_size: 1, trainer.seq_length: 256}}")
    out = run_cli(["run", "tiny", "trainer.max_steps=2", "trainer.log_every=1", "trainer.eval_every=2",
                   "trainer.eval_iters=1", "trainer.progress=false", "trainer.global_batch_size=2",
                   "trainer.micro_batch_size=1", f"run.init_checkpoint={ckpt}", "run.dir=from_hf",
                   f"pipeline=[{sft}]"], cwd=tmp_path).stdout
    assert f"initialised weights from {ckpt}" in out, out[-3000:]
    recs = read_metrics(tmp_path / "from_hf" / "sft")
    assert [r["step"] for r in recs] == [1, 2] and all(r["loss"] > 0 for r in recs)
    step = sorted((tmp_path / "from_hf" / "sft" / "checkpoints").glob("iter_*"))[-1]
    saved = json.loads((step / "meta.json").read_text())["model"]
    src = json.loads((ckpt / "meta.json").read_text())["model"]
    keys = ("type", "num_moe_experts", "hybrid_pattern", "mamba_num_groups", "moe_shared_expert_gate")
    assert {k: saved.get(k) for k in keys} == {k: src.get(k) for k in keys}
    exp = run_cli(["export-hf", str(tmp_path / "from_hf" / "sft"), "--output", str(tmp_path / "out"),
                   "--dtype", "bf16", "--model-type", arch], cwd=tmp_path)
    assert "parity (export of" in exp.stdout, exp.stdout[-2000:]
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    assert type(model).__name__ == cls
    if arch == "qwen2_moe":
        # The step must keep the import's routing (Qwen2-MoE: top-k weights not renormalised).
        # (with_architecture adopts the routing fields the recipe leaves at the default: meta.NUMERIC_FIELDS)
        assert saved["moe_router_pre_softmax"] is True, "the run took the recipe's routing, not the import's"
        assert model.config.norm_topk_prob is False
