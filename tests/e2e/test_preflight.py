"""The preflight as a user meets it: a CPU login node renders an fp8 SLURM job, while running fp8 on
it stops with exit 2 before any work; a dataset too small for the default split exits 2 with the
documents per split instead of hanging in Megatron."""

import json

from tests.conftest import run_cli


def test_fp8_job_renders_on_a_cpu_machine_but_does_not_run_here(tmp_path):
    import torch

    proc = run_cli(["launch", "nemotron_h_56b", "launcher=slurm", "trainer.precision=fp8", "--dry-run"],
                   cwd=tmp_path, timeout=300)
    assert "#SBATCH --nodes=" in proc.stdout and "trainer.precision=fp8" in proc.stdout
    assert "dry run: nothing submitted" in proc.stdout
    if torch.cuda.is_available():
        return
    proc = run_cli(["run", "tiny", "trainer.precision=fp8"], cwd=tmp_path, check=False, timeout=300)
    assert proc.returncode == 2, proc.stdout
    assert "trainer.precision=fp8 needs an NVIDIA GPU" in proc.stdout
    assert "Traceback" not in proc.stdout and not (tmp_path / "runs").exists()  # before any work


def test_a_split_without_documents_exits_2_instead_of_hanging(tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": f"document {i} " + "words " * 20}) + "\n" for i in range(20)))
    run_cli(["prepare-data", "--input", str(src), "--output-prefix", str(tmp_path / "small"),
             "--tokenizer", "byte"], cwd=tmp_path, timeout=120)
    prefix = tmp_path / "small_text_document"
    assert prefix.with_suffix(".idx").is_file()
    proc = run_cli(["run", "tiny", "data.source=indexed", f"data.path_prefix={prefix}", "data.phases=[]",
                    "trainer.max_steps=2", "trainer.progress=false"], cwd=tmp_path, check=False, timeout=120)
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert "data.split=98,1,1 leaves the valid and test split" in proc.stdout
    assert "train 20 documents" in proc.stdout and "data.split=[18,1,1]" in proc.stdout
    assert "Traceback" not in proc.stdout
