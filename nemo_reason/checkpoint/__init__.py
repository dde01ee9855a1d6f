"""Checkpoints: Megatron dist_checkpointing with atomic publish, verification and resume discovery
(io.py, marker.py), what each checkpoint holds (meta.py), and ``nemo-reason show-checkpoint`` (commands.py)."""
