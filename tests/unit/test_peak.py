"""MFU's denominator: the GPU peak table, the CPU matmul probe (best of timed units, cached, never
lowered), and Peak: a run faster than the peak raises a measured peak; MFU is never above 1.0."""

import json
import time

import torch

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
    assert time.perf_counter() - t0 < 3.0  # ~1 s budget, with room for a loaded machine
    assert 1e-4 < tflops < 100  # TFLOP/s of one CPU process: a tenth of a GFLOP/s to a large server


def test_a_given_peak_is_kept_and_mfu_capped(capsys):
    p = peak.Peak.resolve(200.0)
    assert (p.tflops, p.estimate, p.source) == (200.0, False, "trainer.peak_tflops")
    assert p.mfu(50.0) == 0.25
    assert p.mfu(400.0) == 1.0 and p.tflops == 200.0  # a wrong peak or FLOPs count: capped, named
    assert "above the peak 200 (trainer.peak_tflops)" in capsys.readouterr().err
    p.mfu(500.0)
    assert capsys.readouterr().err == ""  # warned once


def test_a_low_cached_cpu_peak_is_reprobed_when_a_run_beats_it(tmp_path):
    # What a probe on a loaded machine leaves behind: a peak far below what the CPU does.
    key = peak._probe_key()
    cache = tmp_path / "peak_tflops.json"
    cache.write_text(json.dumps({key: 1e-6}))
    p = peak.Peak.resolve(None, str(tmp_path))
    assert p.tflops == 1e-6 and p.estimate and "estimate" in p.describe()
    achieved = 1e-4  # a run on this CPU at 0.1 GFLOP/s: above the cached peak
    mfu = p.mfu(achieved)
    assert 0 < mfu < 1.0 and p.tflops > achieved  # re-measured: the real CPU is faster than the run
    reprobed = p.tflops
    assert json.loads(cache.read_text())[key] == reprobed  # remembered for the next run
    # Faster than even the re-probe (e.g. FLOPs the probe cannot reach): raise to it, no second probe.
    t0 = time.perf_counter()
    assert p.mfu(reprobed * 3) == 1.0 and p.tflops == reprobed * 3
    assert time.perf_counter() - t0 < 0.5
    assert peak.Peak.resolve(None, str(tmp_path)).tflops == reprobed  # cached: no probe, the best value


def test_the_cache_keeps_the_best_probe_per_thread_count(tmp_path):
    assert peak._remember(str(tmp_path), "cpu | 4 threads", 0.3) == 0.3
    assert peak._remember(str(tmp_path), "cpu | 4 threads", 0.1) == 0.3  # a loaded machine never lowers it
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # a rank of a 2-rank run on 2 cores probes with its 1 thread
        assert "| 1 threads |" in peak._probe_key()
        one = peak.cpu_peak_tflops(str(tmp_path))
    finally:
        torch.set_num_threads(threads)
    table = json.loads((tmp_path / "peak_tflops.json").read_text())
    assert table[f"{peak.cpu_model()} | 1 threads | {peak.PROBE_NAME}"] == one > 0


def test_backend_peak_does_not_import_data():
    import inspect

    assert "nemo_reason.data" not in inspect.getsource(peak)
