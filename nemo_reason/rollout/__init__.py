"""Generation for RL: in-process Megatron model with KV and SSM state caches."""
