"""The backend seam: GPU-only imports, torch.cuda and process-group names live only in backend/."""

import re
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "nemo_reason"
PATTERN = re.compile(
    r"(import|from) (transformer_engine|mamba_ssm|causal_conv1d|triton)\b|"
    r"torch\.cuda\b|[\"']nccl[\"']|[\"']gloo[\"']"
)
ALLOWED: list = []  # keep it empty


def test_no_gpu_code_outside_backend():
    offenders = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if rel.parts[0] == "backend":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if PATTERN.search(line) and str(rel) not in ALLOWED:
                offenders.append(f"{rel}:{i}: {line.strip()}")
    assert not offenders, "GPU-only code outside nemo_reason/backend/:\n" + "\n".join(offenders)


def test_importing_the_package_imports_nothing_gpu_only():
    code = (
        "import sys, importlib, pkgutil, nemo_reason\n"
        "mods = [m.name for m in pkgutil.walk_packages(nemo_reason.__path__, 'nemo_reason.')]\n"
        "for m in mods: importlib.import_module(m)\n"
        "bad = [m for m in ('transformer_engine', 'mamba_ssm', 'causal_conv1d', 'triton') if m in sys.modules]\n"
        "print(len(mods), bad)\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
