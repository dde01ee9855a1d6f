"""``nemo-reason import-hf`` / ``export-hf`` as a user types them, and a run that starts from an import.

A tiny random Qwen3 (real ``transformers`` class, sharded safetensors, its own tokenizer) goes
through the CLI both ways with the parity gate; an unsupported architecture exits 2 naming the
supported ones and leaves no output. Then ``nemo-reason run ... run.init_checkpoint=CKPT`` runs a
short SFT step from the imported checkpoint: the step adopts its architecture (and its RoPE base
and norm epsilon) and its tokenizer, and its export is read by transformers. The CLI round trip
and the run are slow (several ``nemo-reason`` processes); the exit-code check is not.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import read_metrics, run_cli
from tests.unit.hf_tiny import TINY, hf_folder, tiny_tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_convert")
    hf = hf_folder(root / "qwen3", transformers.Qwen3Config(**TINY, head_dim=32, rope_theta=1000000.0,
                                                            rms_norm_eps=1e-6), tiny_tokenizer(root / "tok"))
    proc = run_cli(["import-hf", str(hf), "--output", str(root / "ckpt"), "--json"], cwd=root)
    return root, hf, proc


@pytest.mark.slow
def test_import_and_export_from_the_command_line(imported):
    root, hf, proc = imported
    assert "parity (import of" in proc.stdout and (root / "ckpt" / "complete.json").is_file(), proc.stdout[-2000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{\n"):])
    assert summary["model_type"] == "qwen3" and summary["parity"]["passed"]
    show = run_cli(["show-checkpoint", str(root / "ckpt")], cwd=root)
    assert "(import-hf)" in show.stdout and "tokenizer    hf" in show.stdout
    out = run_cli(["export-hf", str(root / "ckpt"), "--output", str(root / "qwen3_out")], cwd=root)
    assert "parity (export of" in out.stdout and "exported" in out.stdout, out.stdout[-2000:]
    assert json.loads((root / "qwen3_out" / "config.json").read_text())["model_type"] == "qwen3"


def test_unsupported_architecture_exits_2_and_writes_nothing(tmp_path):
    bad = tmp_path / "gpt2"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    proc = run_cli(["import-hf", str(bad), "--output", str(tmp_path / "out")], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "supported: " in proc.stdout and "llama (LlamaForCausalLM)" in proc.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_run_starts_from_the_imported_checkpoint(imported):
    root, _, _ = imported
    ckpt = root / "ckpt"
    # Continued pretraining (the recipe's data, tokenized with the imported tokenizer), then SFT.
    sft = ("{type: sft, sources: [bundled:math:40], skip_bad: true, eval_conversations: 8, "
           "overrides: {trainer.micro_batch_size: 1, trainer.seq_length: 512}}")
    proc = run_cli(["run", "tiny", "trainer.max_steps=2", "trainer.log_every=1", "trainer.eval_every=2",
                    "trainer.eval_iters=1", "trainer.progress=false", "trainer.global_batch_size=2",
                    "trainer.micro_batch_size=1",
                    f"run.init_checkpoint={ckpt}", "run.dir=from_hf", f"pipeline=[{{type: pretrain}}, {sft}]"],
                   cwd=root)
    out = proc.stdout
    assert f"initialised weights from {ckpt}" in out, out[-3000:]
    assert "model architecture from" in out and "rotary_base=1000000" in out and "layernorm_epsilon=1e-06" in out
    for step in ("pretrain", "sft"):
        recs = read_metrics(root / "from_hf" / step)
        assert [r["step"] for r in recs] == [1, 2] and all(r["loss"] > 0 for r in recs)
        step_ckpt = sorted((root / "from_hf" / step / "checkpoints").glob("iter_*"))[-1]
        meta = json.loads((step_ckpt / "meta.json").read_text())
        assert meta["model"]["qk_layernorm"] and meta["model"]["rotary_base"] == 1000000
        assert meta["tokenizer"]["name"] == "hf" and meta["tokenizer"]["vocab_size"] == 300, meta["tokenizer"]
    # The fine-tuned model exports (architecture inferred: the step's checkpoint has no "hf" record).
    run_cli(["export-hf", str(root / "from_hf" / "sft"), "--output", str(root / "sft_hf")], cwd=root)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(root / "sft_hf"))
    assert type(model).__name__ == "Qwen3ForCausalLM"
