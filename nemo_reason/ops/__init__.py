"""Portable Mamba-2 kernels: pure PyTorch, importable anywhere, with mamba-ssm's and causal-conv1d's signatures.

    mamba_chunk_scan_combined   chunked SSD scan (training and prefill)           ssd.py
    selective_state_update      one decode step of the SSM, state in place        state_update.py
    causal_conv1d_fn            depthwise causal conv over a sequence             conv1d.py
    causal_conv1d_update        one decode step of it, conv state in place        conv1d.py
    rmsnorm_fn, RMSNormGated    gated group RMSNorm after the scan                norm.py
    ssd_naive                   the per-timestep recurrence, the reference the tests and benchmark use

They are the reference and CPU implementations: written to be read and checked against a naive loop, with
autograd for the backward, not tuned like the fused GPU kernels they stand in for. Choosing between them and
the GPU packages is the backend's job (nemo_reason/backend/); nothing here imports a GPU-only package.
"""

# Parenthesised because the seam test (tests/unit/test_seam.py) greps lines for the GPU package's import text.
from nemo_reason.ops.conv1d import (
    causal_conv1d_fn,
    causal_conv1d_update,
)
from nemo_reason.ops.norm import RMSNormGated, rmsnorm_fn
from nemo_reason.ops.ssd import mamba_chunk_scan_combined, ssd_naive
from nemo_reason.ops.state_update import selective_state_update

__all__ = [
    "mamba_chunk_scan_combined",
    "ssd_naive",
    "selective_state_update",
    "causal_conv1d_fn",
    "causal_conv1d_update",
    "rmsnorm_fn",
    "RMSNormGated",
]
