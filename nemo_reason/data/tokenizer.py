"""Tokenizers with the interface Megatron-Core's datasets expect.

``ByteTokenizer`` is the placeholder used by the tiny recipes: UTF-8 bytes (ids 0-255) plus
``<eod>`` and ``<pad>``. It needs no training and no files, so every machine builds the same
dataset. (The data issue adds trained BPE, Hugging Face and SentencePiece tokenizers behind the
same registry.)
"""

from __future__ import annotations

from typing import List

import numpy as np
from megatron.core.datasets.megatron_tokenizer import MegatronLegacyTokenizer

from nemo_reason.registry import Registry

TOKENIZERS: Registry = Registry("tokenizer")


@TOKENIZERS.register("byte")
class ByteTokenizer(MegatronLegacyTokenizer):
    """UTF-8 bytes plus two special tokens."""

    EOD = 256
    PAD = 257

    def __init__(self):
        super().__init__("byte")

    def tokenize(self, text: str) -> List[int]:
        return list(text.encode("utf-8"))

    def detokenize(self, ids) -> str:
        data = bytes(int(i) for i in np.asarray(ids).reshape(-1) if 0 <= int(i) < 256)
        return data.decode("utf-8", errors="replace")

    @property
    def vocab_size(self) -> int:
        return 258

    @property
    def vocab(self):
        return {**{chr(i) if i < 128 else f"<0x{i:02X}>": i for i in range(256)}, "<eod>": 256, "<pad>": 257}

    @property
    def inv_vocab(self):
        return {v: k for k, v in self.vocab.items()}

    @property
    def eod(self) -> int:
        return self.EOD

    @property
    def pad(self) -> int:
        return self.PAD


def build_tokenizer(name: str) -> MegatronLegacyTokenizer:
    return TOKENIZERS.get(name)()


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Pad the vocabulary so the output layer splits evenly across TP ranks.

    Megatron-LM pads to a multiple of ``divisible_by * tp``; we pad to a multiple of
    lcm(divisible_by, tp), which is the same whenever tp divides divisible_by (the usual case)
    and keeps the padded size, and so the model, identical across TP sizes for parity tests.
    """
    import math

    multiple = divisible_by * tp // math.gcd(divisible_by, tp)
    return ((vocab_size + multiple - 1) // multiple) * multiple
