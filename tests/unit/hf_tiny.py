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


class _Ids:
    """The tokenizer our sampler needs, without an end-of-document token (both sides run to length)."""

    vocab_size, eod = VOCAB, None

    def detokenize(self, ids):
        return " ".join(map(str, ids))


def assert_greedy_equals_transformers(ckpt: Path, hf_dir: Path, lengths, max_new_tokens: int, seed: int = 3):
    """Our rollout (greedy, one right-padded batch) from ``ckpt`` equals transformers' greedy
    ``generate`` on ``hf_dir`` (one prompt at a time), token for token, on random prompts of ``lengths``."""
    import copy

    import torch
    import transformers

    from nemo_reason.bridge.megatron_side import build_our_model
    from nemo_reason.checkpoint.meta import read_meta
    from nemo_reason.rollout.sampler import SamplingParams, generate

    model = build_our_model(read_meta(ckpt).model, VOCAB, checkpoint=ckpt)
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]
    ours = generate(model, _Ids(), prompts, SamplingParams(greedy=True, max_new_tokens=max_new_tokens))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    gen = copy.deepcopy(hf.generation_config)
    gen.eos_token_id, gen.pad_token_id, gen.do_sample = None, 0, False
    for s in ours:
        p = torch.tensor([prompts[s.prompt_index]])
        with torch.no_grad():
            ref = hf.generate(p, attention_mask=torch.ones_like(p), generation_config=gen, max_new_tokens=max_new_tokens)
        assert s.tokens == ref[0, p.shape[1]:].tolist(), f"prompt {s.prompt_index}"
