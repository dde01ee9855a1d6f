"""Data: tokenizers, the bundled corpus, Megatron indexed datasets and the training data loader."""
