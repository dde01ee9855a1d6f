"""Analytical model of a run: FLOPs (and, with the parallelism issue, parameters, memory, layout checks)."""
