"""The post-training recipes run end to end as a user types them (slow: 1.5-2 minutes each on 2 cores).

``tiny_acereason``: pretrain, then GRPO on math at 32 and 64 new tokens, then on code at 96, each stage
from the previous stage's checkpoint; ``tiny_acemath``: pretrain, general SFT, math SFT."""

from __future__ import annotations

import pytest

from tests.conftest import read_metrics, run_cli


@pytest.mark.slow
def test_tiny_acereason_stages_chain_with_growing_length(tmp_path):
    proc = run_cli(["run", "tiny_acereason", "run.dir=ar", "trainer.progress=false"], cwd=tmp_path)
    stages = [("grpo_math_32", "math", 32), ("grpo_math_64", "math", 64), ("grpo_code_96", "code", 96)]
    prev = "pretrain"
    for name, domain, length in stages:
        assert f"initialised weights from ar/{prev}/checkpoints/" in proc.stdout, proc.stdout[-3000:]
        recs = read_metrics(tmp_path / "ar" / name)
        assert len(recs) == 4 and all(f"reward/{domain}" in r for r in recs)
        assert max(r["response_length_max"] for r in recs) <= length
        assert all(abs(r["ratio_mean"] - 1.0) < 1e-5 for r in recs)  # strictly on-policy
        prev = name


@pytest.mark.slow
def test_tiny_acemath_general_then_math_sft(tmp_path):
    proc = run_cli(["run", "tiny_acemath", "run.dir=am", "trainer.progress=false"], cwd=tmp_path)
    assert "initialised weights from am/sft_general/checkpoints/" in proc.stdout
    for name in ("sft_general", "sft_math"):
        assert (tmp_path / "am" / name / "done.json").is_file()
        recs = read_metrics(tmp_path / "am" / name)
        assert recs[-1]["step"] == 40 and "eval_loss" in recs[-1], (name, recs[-1])
