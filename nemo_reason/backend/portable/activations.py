"""Activations that skip ``torch.compile`` when no gradient is recorded.

Megatron-Core's ``activations.squared_relu`` is decorated with ``jit_fuser`` (``torch.compile`` in
recent PyTorch). On the CPU, at decode sizes, the compiled call's guards and wrappers cost several
times the two ops it fuses (about 150 us against 20 us per call, batch 8, tiny model).
:func:`squared_relu` calls Megatron's compiled function whenever autograd records (training: the
same graph as before) and the same two ops eagerly under ``torch.inference_mode``/``no_grad``
(rollout, evaluation): ``r * r`` with ``r = relu(x)``, the same values (``pow(r, 2)`` is computed
as ``r * r``, one rounding).

Left out: the other ``jit_fuser`` activations (gelu variants), unused by the recipes' models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import activations


def squared_relu(x: torch.Tensor) -> torch.Tensor:
    """``relu(x) ** 2``: Megatron's compiled kernel when grad is recorded, eager otherwise."""
    if torch.is_grad_enabled():
        return activations.squared_relu(x)
    r = F.relu(x)
    return r * r  # what pow(r, 2) computes (ATen's and Inductor's square), without pow's dispatch
