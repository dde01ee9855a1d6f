"""Analytical model of a run, behind `nemo-reason plan`: parameters (params.py), model FLOPs (flops.py),
per-GPU memory (memory.py), layout rules (layout.py) and the report (report.py). Pure Python: no torch,
no Megatron-Core; docs/planner.md gives the formulas and their sources."""
