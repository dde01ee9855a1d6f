"""What machine a benchmark ran on, in one line for docs/benchmarks.md."""

import os
import platform

from nemo_reason.backend.peak import cpu_model


def describe(threads: bool = False, load: bool = False) -> str:
    import torch

    parts = [cpu_model(), f"{os.cpu_count()} cores"]
    if load and hasattr(os, "getloadavg"):
        parts[-1] += f" (load average {os.getloadavg()[0]:.1f} at the end)"
    if threads:
        parts.append(f"{torch.get_num_threads()} torch thread(s)")
    parts += [f"Python {platform.python_version()}", f"torch {torch.__version__}"]
    return ", ".join(parts)
