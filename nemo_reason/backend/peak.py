"""Peak dense TFLOP/s of one rank's device: the denominator of MFU (model FLOPs utilisation).

:meth:`Peak.resolve` picks it once per run, :meth:`Peak.mfu` turns an achieved TFLOP/s per rank
into MFU:

- ``trainer.peak_tflops`` when set (always wins);
- on CUDA, the GPU's published dense bf16 tensor-core peak (no sparsity), looked up by device name;
  a GPU missing from the table counts as an H100 SXM (989.4). MFU is quoted against the bf16 peak
  whatever the training precision, as Megatron-LM / NeMo performance tables do;
- on CPU, measured, and so an *estimate* (``Peak.estimate``): fp32 1024 x 1024 matmuls at the
  rank's own thread count, timed in units of >= 20 ms, the best unit of ~1 s (a shared machine is
  rarely loaded for all of it). fp32, because CPUs without AMX run bf16 matmuls 10-100x slower: a
  bf16 probe would measure the emulation, not the machine. Cached per CPU model and thread count
  in ``<cache>/peak_tflops.json`` (``NEMO_REASON_CACHE``, else ``~/.cache/nemo_reason``); the
  cache keeps the best probe ever, so a probe on a loaded machine never lowers it.

A run faster than the peak proves the peak low: on CPU, :meth:`Peak.mfu` probes again (once per
run, longer) and raises the peak to the larger of that probe and the achieved rate; a configured
or datasheet peak is kept and a warning names it. Either way MFU is never above 1.0.

Left out: bf16/fp8 CPU peaks, per-core frequency or AVX-width arithmetic, other accelerators.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
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

PROBE_SIZE = 1024
# A probe's key in the cache; bump the version when the probe changes, so old values are not reused
# (v1 was the best single matmul of 0.5 s, easily taken on a loaded machine).
PROBE_NAME = f"fp32 matmul {PROBE_SIZE} v2"
UNIT_S = 0.02  # one timed unit of matmuls: long enough for the timer and the thread pool to settle


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


def cache_root(cache_dir: str = "") -> Path:
    """The data cache (``cache_dir``, else ``$NEMO_REASON_CACHE``, else ``~/.cache/nemo_reason``), as
    data/indexed.py resolves it; here so that backend/ imports nothing from data/."""
    return Path(cache_dir or os.environ.get("NEMO_REASON_CACHE", Path.home() / ".cache" / "nemo_reason"))


def measure_cpu_tflops(size: int = PROBE_SIZE, budget_s: float = 1.0, unit_s: float = UNIT_S) -> float:
    """fp32 matmul throughput of this process's threads, in TFLOP/s: the best of the timed units
    (each as many back-to-back matmuls as fill ``unit_s``) that fit in ``budget_s`` (at least 3)."""
    import torch

    a = torch.randn(size, size)
    b = torch.randn(size, size)
    out = torch.empty(size, size)
    t0 = time.perf_counter()
    torch.mm(a, b, out=out)  # warm-up: thread pool, allocator; and a first guess of one matmul's time
    one = max(time.perf_counter() - t0, 1e-6)
    per_unit = max(1, int(unit_s / one))
    best, start, units = 0.0, time.perf_counter(), 0
    while units < 3 or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        for _ in range(per_unit):
            torch.mm(a, b, out=out)
        dt = time.perf_counter() - t0
        best, units = max(best, 2.0 * size**3 * per_unit / dt / 1e12), units + 1
    return best


def _probe_key() -> str:
    import torch

    return f"{cpu_model()} | {torch.get_num_threads()} threads | {PROBE_NAME}"


def _read_cache(path: Path) -> dict:
    try:
        table = json.loads(path.read_text())
        return table if isinstance(table, dict) else {}
    except (OSError, ValueError):
        return {}


def _remember(cache_dir: str, key: str, value: float) -> float:
    """Keep the best probe for ``key``; returns it."""
    path = cache_root(cache_dir) / "peak_tflops.json"
    table = _read_cache(path)
    best = max(value, float(table.get(key, 0.0)))
    if best != table.get(key):
        table[key] = best
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(table, indent=1))
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache only costs the probe next time
    return best


def cpu_peak_tflops(cache_dir: str = "") -> float:
    """The probe's best result for this CPU model and thread count, measured on first use and cached."""
    key = _probe_key()
    cached = _read_cache(cache_root(cache_dir) / "peak_tflops.json").get(key)
    if cached:
        return float(cached)
    return _remember(cache_dir, key, measure_cpu_tflops())


@dataclass
class Peak:
    """One rank's peak TFLOP/s for a run, and where it came from.

    ``tflops``: the denominator; ``estimate``: True when measured here (CPU) rather than configured
    or from a datasheet, so that MFU is labelled an estimate; ``source``: one line for the log.
    """

    tflops: float
    estimate: bool
    source: str
    cache_dir: str = ""
    _reprobed: bool = field(default=False, repr=False)
    _warned: bool = field(default=False, repr=False)

    @classmethod
    def resolve(cls, configured: Optional[float] = None, cache_dir: str = "") -> "Peak":
        """``trainer.peak_tflops``, else the GPU's datasheet peak, else the CPU probe (cached)."""
        if configured:
            return cls(float(configured), False, "trainer.peak_tflops", cache_dir)
        import torch

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name()
            return cls(gpu_peak_tflops(name), False, f"{name}: datasheet dense bf16", cache_dir)
        return cls(cpu_peak_tflops(cache_dir), True,
                   f"CPU fp32 matmul probe, {torch.get_num_threads()} thread(s): an estimate", cache_dir)

    def mfu(self, achieved_tflops: float) -> float:
        """MFU of ``achieved_tflops`` (model TFLOP/s of this rank), at most 1.0. An achieved rate above
        the peak raises a measured peak (a new, longer probe the first time) or warns about a given one."""
        if achieved_tflops > self.tflops:
            if self.estimate:
                if not self._reprobed:
                    self._reprobed = True
                    probe = _remember(self.cache_dir, _probe_key(), measure_cpu_tflops(budget_s=2.0))
                    self.tflops = max(self.tflops, probe)
                self.tflops = max(self.tflops, achieved_tflops)
            elif not self._warned:
                self._warned = True
                print(f"[nemo-reason] warning: {achieved_tflops:.4g} TFLOP/s per rank is above the peak "
                      f"{self.tflops:g} ({self.source}); MFU is capped at 1.0: check trainer.peak_tflops "
                      "or the FLOPs count", file=sys.stderr, flush=True)
        return min(1.0, achieved_tflops / self.tflops) if self.tflops > 0 else 0.0

    def describe(self) -> str:
        return f"peak {self.tflops:.4g} TFLOP/s per rank ({self.source})"


def peak_tflops(configured: Optional[float] = None, cache_dir: str = "") -> float:
    """Peak dense TFLOP/s per rank for MFU (see the module docstring for the order)."""
    return Peak.resolve(configured, cache_dir).tflops
