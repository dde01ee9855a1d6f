"""The `sft` step as a user runs it: a hybrid model pretrained, then fine-tuned on packed bundled
math conversations, in one pipeline; and the step's layout rule exits 2 before any work."""

from __future__ import annotations

import pytest

from tests.conftest import read_metrics, run_cli

ARGS = ["tiny_hybrid", "trainer.max_steps=2", "trainer.log_every=1", "trainer.eval_every=2", "trainer.eval_iters=1",
        "trainer.progress=false", "data.num_documents=300", "data.phases=[]", "trainer.global_batch_size=4",
        "trainer.micro_batch_size=4", "trainer.seq_length=128", "run.dir=sft"]
SFT = ("{type: sft, sources: [bundled:math:120], skip_bad: true, eval_conversations: 16, "
       "overrides: {trainer.micro_batch_size: MBS, trainer.seq_length: 256}}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("sft")


def test_pretrain_then_packed_sft_on_a_hybrid(workdir):
    proc = run_cli(["run", *ARGS, f"pipeline=[{{type: pretrain}},{SFT.replace('MBS', '1')}]"], cwd=workdir)
    assert "initialised weights from" in proc.stdout and "conversations" in proc.stdout, proc.stdout[-3000:]
    recs = read_metrics(workdir / "sft" / "sft")
    assert [r["step"] for r in recs] == [1, 2]
    assert all(r["loss"] > 0 for r in recs) and "eval_loss" in recs[-1]
    # Packing needs one row per micro-batch: refused with the fix at composition, before any step runs
    # (so nothing of the finished run is set aside).
    bad = run_cli(["run", *ARGS, f"pipeline=[{{type: pretrain}},{SFT.replace('MBS', '2')}]"], cwd=workdir,
                  check=False)
    assert bad.returncode == 2 and "trainer.micro_batch_size=1" in bad.stdout, bad.stdout[-2000:]
    assert "[nemo-reason] step " not in bad.stdout and not (workdir / "sft" / ".superseded").exists()
