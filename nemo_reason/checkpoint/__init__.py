"""Checkpoints: Megatron dist_checkpointing with atomic publish and resume discovery."""
