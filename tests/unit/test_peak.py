"""MFU's denominator: the GPU peak table and the CPU matmul probe, measured once and cached."""

import time

from nemo_reason.backend import peak


def test_gpu_peak_table_and_cached_cpu_probe(tmp_path, monkeypatch):
    assert peak.gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert peak.gpu_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak.gpu_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak.gpu_peak_tflops("Some Future GPU") == 989.4
    assert peak.peak_tflops(123.0) == 123.0
    assert peak.measure_cpu_tflops(size=64, budget_s=0.01) > 0
    calls = []
    monkeypatch.setattr(peak, "measure_cpu_tflops", lambda: calls.append(1) or 0.5)
    monkeypatch.setenv("NEMO_REASON_CACHE", str(tmp_path))
    assert peak.cpu_peak_tflops() == 0.5 and peak.cpu_peak_tflops() == 0.5
    assert calls == [1] and (tmp_path / "peak_tflops.json").is_file()


def test_cpu_probe_is_quick_and_plausible():
    t0 = time.perf_counter()
    tflops = peak.measure_cpu_tflops()
    assert time.perf_counter() - t0 < 3.0  # ~0.5 s budget, with room for a loaded machine
    assert 1e-4 < tflops < 100  # TFLOP/s of one CPU process: a tenth of a GFLOP/s to a large server
