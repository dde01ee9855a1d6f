"""Hybrid layer patterns for the models: the allocation lives in :mod:`nemo_reason.config.layers`
(pure Python, shared by validation, the planner and the model builders), re-exported here for the
model code and old callers."""

from nemo_reason.config.layers import (  # noqa: F401  (re-exported)
    ATTENTION, MAMBA, MLP, MOE, NAMES, SYMBOLS, PatternError, allocate, counts, describe, layer_counts,
    model_layers,
)
