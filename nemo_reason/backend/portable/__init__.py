"""Portable modules with Megatron-Core's interfaces, used where Megatron's own need CUDA."""
