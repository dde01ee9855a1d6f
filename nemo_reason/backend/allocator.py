"""The host allocator's settings on CPU: keep freed memory for the next micro-batch.

On CPU every tensor is a ``malloc``. glibc serves the large ones (``[s, b, V]`` logits: 16 MiB at
``tiny`` sizes) from memory it maps fresh, or from the top of its heap, and hands them back to the
system when they are freed (``mmap`` threshold and heap trimming). The next micro-batch then faults
every page in again: measured on the distill step (``benchmarks/bench_distill.py``), 8,000-16,000 minor
page faults and 15-37 ms of system time per step, where the student's plain training step, whose
allocations happen to fit the heap, had 10. :func:`keep_freed_memory` sets ``M_MMAP_THRESHOLD`` to
glibc's largest (32 MiB: tensors up to that size come from the heap) and ``M_TRIM_THRESHOLD`` /
``M_TOP_PAD`` so that the heap is not trimmed: freed memory is reused, as a caching allocator would.
The process keeps its high-water mark of heap memory; nothing else changes (values are the same
bits).

Process-wide and once. Only with glibc, and only when CUDA is absent (device tensors have their own
caching allocator; the host side is then small). Left out: tensors above 32 MiB (glibc maps them
whatever the setting), other C libraries (musl, macOS: a no-op), jemalloc/tcmalloc (``LD_PRELOAD``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: larger values are refused
TRIM_THRESHOLD = 2**31 - 1  # the largest an int holds: the heap above it is never trimmed in practice
TOP_PAD = 64 << 20


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Make glibc keep freed host memory for reuse (module docstring); True when it took effect."""
    from nemo_reason.backend import cuda_available

    if cuda_available() or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    ok = libc.mallopt(M_TOP_PAD, TOP_PAD) == 1 and ok
    return libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
