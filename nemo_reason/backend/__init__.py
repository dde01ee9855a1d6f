"""The one backend seam.

Only this package imports GPU-only packages (transformer_engine, mamba_ssm, causal_conv1d),
calls ``torch.cuda`` or names a process-group backend. Everything else asks it:

- :func:`select` turns ``model.backend`` (``auto|te|local``) into ``"te"`` or ``"local"``, once;
- :mod:`.specs` builds Megatron layer specs for that choice (and, for hybrids, Megatron's
  ``MambaMixer`` where mamba-ssm/causal-conv1d import, else the portable mixer);
- :mod:`.dist` picks the device and process-group backend (nccl on CUDA, gloo on CPU);
- :mod:`.cpu_compat` redirects Megatron-Core's CUDA hard-codes when CUDA is absent.
"""

from __future__ import annotations

import functools
import importlib.util

# torch is imported inside the functions that need it: config validation (and so `nemo-reason plan`,
# `show`) reads BACKENDS without paying for torch's import.
BACKENDS = ("auto", "te", "local")


class BackendError(RuntimeError):
    """The requested backend cannot run on this machine."""


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def cuda_device_count() -> int:
    """GPUs this process sees (the default of launcher.gpus_per_node for local and docker runs)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@functools.lru_cache(maxsize=None)
def te_importable() -> bool:
    """True when Transformer Engine imports (checked only on CUDA machines: TE's PyPI meta
    package raises RuntimeError, not ImportError, on import without CUDA)."""
    if not cuda_available() or importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        return False
    return True


@functools.lru_cache(maxsize=None)
def mamba_kernels_importable() -> bool:
    """True when mamba-ssm's Triton kernels and causal-conv1d's CUDA extension import (CUDA only):
    then hybrid models use Megatron's own ``MambaMixer``, else the portable one."""
    if not cuda_available():
        return False
    if importlib.util.find_spec("mamba_ssm") is None or importlib.util.find_spec("causal_conv1d") is None:
        return False
    try:
        import causal_conv1d  # noqa: F401
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken build is as good as none
        return False
    return True


def select(requested: str) -> str:
    """Resolve ``model.backend`` to ``"te"`` or ``"local"``."""
    if requested not in BACKENDS:
        raise BackendError(f"model.backend={requested!r} is not one of {', '.join(BACKENDS)}")
    if requested == "local":
        return "local"
    if requested == "te":
        if not cuda_available():
            raise BackendError(
                "model.backend=te needs CUDA and Transformer Engine; this machine has no CUDA "
                "device. Use model.backend=local (or auto)."
            )
        if not te_importable():
            raise BackendError(
                "model.backend=te: transformer_engine does not import. Install the gpu extra "
                "(pip install -e '.[gpu]') or use model.backend=local."
            )
        return "te"
    return "te" if te_importable() else "local"


def prepare(resolved_backend: str) -> None:
    """Get Megatron-Core ready for this process: on a CPU machine, install the redirections."""
    if not cuda_available():
        from nemo_reason.backend import cpu_compat

        cpu_compat.install()
