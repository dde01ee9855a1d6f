"""The one backend seam.

Only this package imports GPU-only packages (transformer_engine, mamba_ssm, causal_conv1d),
calls ``torch.cuda`` or names a process-group backend. Everything else asks it:

- :func:`select` turns ``model.backend`` (``auto|te|local``) into ``"te"`` or ``"local"``, once;
- :mod:`.specs` builds Megatron layer specs for that choice (and, for hybrids, Megatron's
  ``MambaMixer`` where mamba-ssm/causal-conv1d import, else the portable mixer);
- :mod:`.dist` picks the device and process-group backend (nccl on CUDA, gloo on CPU);
- :mod:`.cpu_compat` redirects Megatron-Core's CUDA hard-codes when CUDA is absent;
- :func:`prepare` refuses a megatron-core outside the tested range, then installs those redirections.
"""

from __future__ import annotations

import functools
import importlib.util

# torch is imported inside the functions that need it: config validation (and so `nemo-reason plan`,
# `show`) reads BACKENDS without paying for torch's import.
BACKENDS = ("auto", "te", "local")
# The megatron-core versions the CPU redirections (cpu_compat, written against 0.16.1 file by file)
# and the parity checks are tested with; setup.py pins the same range.
MEGATRON_CORE_SUPPORTED = ">=0.16.1,<0.17"


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


def check_megatron_core_version(version: str) -> None:
    """Raise :class:`BackendError` unless ``version`` is in :data:`MEGATRON_CORE_SUPPORTED`.

    Pip's rules apply: a pre-release of 0.17 is outside ``<0.17``, a local build tag
    (``0.16.1+nv``) is ignored."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    fix = f"pip install 'megatron-core{MEGATRON_CORE_SUPPORTED}'"
    try:
        ok = SpecifierSet(MEGATRON_CORE_SUPPORTED).contains(Version(version), prereleases=True)
    except InvalidVersion:
        ok = False
    if not ok:
        raise BackendError(
            f"megatron-core {version} is installed, but nemo_reason is tested with megatron-core "
            f"{MEGATRON_CORE_SUPPORTED} only (its CPU redirections and parity checks are written "
            f"against 0.16.1). Fix: {fix}"
        )


def installed_megatron_core_version() -> str:
    """The installed megatron-core version: the package metadata, else (a source checkout on
    PYTHONPATH, as in some containers) ``megatron.core.package_info``."""
    import importlib.metadata

    try:
        return importlib.metadata.version("megatron-core")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        from megatron.core.package_info import __version__
    except ImportError:
        raise BackendError(
            f"megatron-core is not installed. Fix: pip install 'megatron-core{MEGATRON_CORE_SUPPORTED}'"
        ) from None
    return __version__


def prepare(resolved_backend: str) -> None:
    """Get Megatron-Core ready for this process: refuse an untested megatron-core version, and on
    a CPU machine install the redirections."""
    check_megatron_core_version(installed_megatron_core_version())
    if not cuda_available():
        from nemo_reason.backend import cpu_compat

        cpu_compat.install()
