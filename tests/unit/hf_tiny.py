"""Tiny randomly initialised Hugging Face models on disk, for the bridge tests.

``tiny_tokenizer(dir)`` trains a 300-token byte-level BPE (``nemo_reason.data.bpe.train_bpe``) on a
few bundled-style sentences; ``hf_folder(dir, config)`` builds the ``transformers`` model of a
config (real classes: ``LlamaConfig``, ``Qwen2Config``, ...), seeded, saves it with
``save_pretrained`` (safetensors, sharded with ``max_shard_size``) and copies the tokenizer in.
"""

from __future__ import annotations

import shutil
from pathlib import Path

VOCAB = 300
TEXTS = [f"{a} plus {b} is {a + b}. The answer is {a * b}; x = {a}, y = {b}." for a in range(40) for b in range(12)]

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=VOCAB, max_position_embeddings=256)


def tiny_tokenizer(folder: Path) -> Path:
    from nemo_reason.data.bpe import train_bpe

    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        train_bpe(TEXTS, VOCAB, folder, min_frequency=1)
    return folder


def hf_folder(folder: Path, config, tokenizer_dir: Path, seed: int = 0, max_shard_size: str = "50KB",
              perturb_norms: bool = True) -> Path:
    """Save a seeded random model of ``config`` into ``folder`` with the tokenizer; returns it.
    ``perturb_norms``: norm weights randomised too (HF initialises them to one/zero, which would
    hide a swapped norm)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if perturb_norms:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.add_(torch.randn_like(p) * 0.1)
    folder = Path(folder)
    model.save_pretrained(str(folder), max_shard_size=max_shard_size)
    for f in Path(tokenizer_dir).iterdir():
        shutil.copyfile(f, folder / f.name)
    return folder
