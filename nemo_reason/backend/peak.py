"""Peak dense TFLOP/s of one rank's device: the denominator of MFU (model FLOPs utilisation).

- ``trainer.peak_tflops`` when set (always wins);
- on CUDA, the GPU's published dense bf16 tensor-core peak (no sparsity), looked up by device name;
  a GPU missing from the table counts as an H100 SXM (989.4). MFU is quoted against the bf16 peak
  whatever the training precision, as Megatron-LM / NeMo performance tables do;
- on CPU, measured: the best of a few 1024 x 1024 fp32 matmuls (~0.5 s), once per CPU model and
  thread count, cached in ``<cache>/peak_tflops.json`` (``NEMO_REASON_CACHE``, else
  ``~/.cache/nemo_reason``). fp32, because CPUs without AMX run bf16 matmuls 10-100x slower: a
  bf16 probe would take seconds and measure the emulation, not the machine.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Optional

H100_BF16_TFLOPS = 989.4

# Substring of torch.cuda.get_device_name() -> dense bf16 TFLOP/s (vendor datasheets, sparsity off).
# Order matters: the first match wins.
GPU_BF16_TFLOPS = (
    ("GB200", 2500.0),
    ("B200", 2250.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", H100_BF16_TFLOPS),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("H800", 989.4),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
)


def gpu_peak_tflops(device_name: str) -> float:
    for key, value in GPU_BF16_TFLOPS:
        if key in device_name:
            return value
    return H100_BF16_TFLOPS


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_cpu_tflops(size: int = 1024, budget_s: float = 0.5, max_runs: int = 8) -> float:
    """Best-of-N fp32 matmul throughput of this process's threads, in TFLOP/s."""
    import torch

    a = torch.randn(size, size)
    b = torch.randn(size, size)
    a @ b  # warm-up: thread pool, allocator
    best, spent, runs = float("inf"), 0.0, 0
    while runs < 2 or (spent < budget_s and runs < max_runs):
        t0 = time.perf_counter()
        a @ b
        dt = time.perf_counter() - t0
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return 2.0 * size**3 / best / 1e12


def cpu_peak_tflops(cache_dir: str = "") -> float:
    """The probe's result for this CPU model and thread count, measured on first use and cached."""
    import torch

    from nemo_reason.data.indexed import cache_root

    key = f"{cpu_model()} | {torch.get_num_threads()} threads | fp32 matmul 1024"
    path = cache_root(cache_dir) / "peak_tflops.json"
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    if key in table:
        return float(table[key])
    value = measure_cpu_tflops()
    table[key] = value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(table, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs the probe next time
    return value


def peak_tflops(configured: Optional[float] = None, cache_dir: str = "") -> float:
    """Peak dense TFLOP/s per rank for MFU (see the module docstring for the order)."""
    if configured:
        return float(configured)
    import torch

    if torch.cuda.is_available():
        return gpu_peak_tflops(torch.cuda.get_device_name())
    return cpu_peak_tflops(cache_dir)
