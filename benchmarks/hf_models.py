"""Hugging Face models with the architecture of our tiny recipes (random weights), for benchmarks
that compare against transformers or TRL.

- ``dense``: ``NemotronForCausalLM`` with the sizes of `tiny` (4 layers, hidden 128, ffn 512, 4
  heads / 2 KV groups, squared ReLU, full rotary, untied embeddings);
- ``hybrid``: ``NemotronHForCausalLM`` with the pattern and Mamba sizes of `tiny_hybrid`
  (``M-M*-M-``).

The same construction as benchmarks/bench_rollout.py. ``special`` sets the token ids a trainer
reads from the model config (``bos_token_id``, ``eos_token_id``, ``pad_token_id``). Needs
transformers (a benchmark-only dependency).
"""

from __future__ import annotations


def hf_model(kind: str = "dense", vocab: int = 1024, **special):
    import transformers

    common = dict(vocab_size=vocab, hidden_size=128, intermediate_size=512, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False, **special)
    if kind == "dense":
        cfg = transformers.NemotronConfig(num_hidden_layers=4, hidden_act="relu2", partial_rotary_factor=1.0,
                                          **common)
        return transformers.NemotronForCausalLM(cfg)
    if kind == "hybrid":
        cfg = transformers.NemotronHConfig(num_hidden_layers=7, hybrid_override_pattern="M-M*-M-", mamba_num_heads=8,
                                           mamba_head_dim=32, ssm_state_size=16, n_groups=2, chunk_size=32,
                                           mlp_hidden_act="relu2", **common)
        return transformers.NemotronHForCausalLM(cfg)
    raise ValueError(f"unknown model kind {kind!r}: use dense or hybrid")
