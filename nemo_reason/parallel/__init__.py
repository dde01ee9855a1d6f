"""Parallel layout: validation and the one place Megatron's parallel_state is initialised."""

from nemo_reason.parallel.dims import ParallelDims  # noqa: F401
