"""What a run shows and records (rank 0 only): a live progress line, ``metrics.jsonl`` with one
JSON object per logged step, and TensorBoard event files beside it.

On resume, records past the resumed step are dropped from ``metrics.jsonl`` first, so the file
always reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional


def fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def fmt_rate(x: float) -> str:
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}"


def truncate_after(path: Path, step: int) -> None:
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if rec.get("step", 0) <= step:
            keep.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(l + "\n" for l in keep))
    os.replace(tmp, path)


class MetricsWriter:
    def __init__(self, step_dir: Path, max_steps: int, start_step: int, enabled: bool,
                 progress: bool = True, hparams: Optional[dict] = None):
        self.enabled = enabled
        self.max_steps = max_steps
        self.start_step = start_step
        self.progress = progress and enabled
        self.tty = sys.stdout.isatty()
        self.t0 = time.time()
        self.tb = None
        if not enabled:
            return
        step_dir.mkdir(parents=True, exist_ok=True)
        self.path = step_dir / "metrics.jsonl"
        truncate_after(self.path, start_step)
        self.file = open(self.path, "a", buffering=1)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(step_dir / "tensorboard"), purge_step=start_step + 1)
            if hparams:
                self.tb.add_text("config", "\n".join(f"    {k}: {v}" for k, v in hparams.items()))
        except ImportError:  # pragma: no cover - tensorboard is a dependency
            self.tb = None

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record["step"]
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k.replace("_", "/", 1) if k.startswith(("train_", "eval_")) else k, v, step)
        if self.progress:
            self._print(record)

    def _print(self, r: dict) -> None:
        step = r["step"]
        done = step - self.start_step
        elapsed = time.time() - self.t0
        eta = elapsed / done * (self.max_steps - step) if done > 0 else float("nan")
        parts = [f"step {step}/{self.max_steps}"]
        if "loss" in r:
            parts.append(f"loss {r['loss']:.4f}")
        if "eval_loss" in r:
            parts.append(f"eval {r['eval_loss']:.4f}")
        if "lr" in r:
            parts.append(f"lr {r['lr']:.2e}")
        if "grad_norm" in r and r["grad_norm"] is not None:
            parts.append(f"gnorm {r['grad_norm']:.3f}")
        if "tokens_per_s" in r:
            parts.append(f"{fmt_rate(r['tokens_per_s'])} tok/s")
        if r.get("mfu") is not None:
            # On a CPU the peak is a matmul probe: the MFU is an estimate, and says so.
            parts.append(f"MFU ~{100 * r['mfu']:.1f}% (est.)" if r.get("mfu_is_estimate") else f"MFU {100 * r['mfu']:.1f}%")
        if "phase" in r:
            parts.append(f"phase {r['phase']}")
        parts.append(f"ETA {fmt_duration(eta)}")
        print(" | ".join(parts), flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
