"""The backend seam: GPU-only imports, torch.cuda, .cuda() calls, "cuda" device names and
process-group names live only in backend/."""

import re
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "nemo_reason"
PATTERN = re.compile(
    r"(import|from) (transformer_engine|mamba_ssm|causal_conv1d|triton)\b|"
    r"torch\.cuda\b|[\"']nccl[\"']|[\"']gloo[\"']|"
    # .cuda() and the device name "cuda"/"cuda:N" (device="cuda", .to('cuda'), torch.device("cuda:0"))
    r"\.cuda\(|[\"']cuda(:\d+)?[\"']"
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


def test_the_pattern_catches_cuda_calls_and_device_names():
    caught = ['x = x.cuda()', 'model.cuda(0)', 'torch.zeros(1, device="cuda")', "t.to(device='cuda')",
              'torch.device("cuda:0")', "import triton", "torch.cuda.synchronize()", 'backend="nccl"']
    passed = ["x = x.to(device)", "cudagraph = False", "# runs on CUDA machines", "cuda_available()",
              'dev = bdist.device()']
    assert [line for line in caught if not PATTERN.search(line)] == []
    assert [line for line in passed if PATTERN.search(line)] == []


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
