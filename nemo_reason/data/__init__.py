"""Data: tokenizers (tokenizer, bpe), bundled corpora (corpora/, sources), prepare-data (prepare,
prepare_worker, readers, dedup, quality, commands), Megatron indexed datasets (indexed), blends and
phases (blend, phases) and the training data loader (loader)."""
