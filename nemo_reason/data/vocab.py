"""The vocabulary size of a configured tokenizer, read without building a Megatron tokenizer.

``nemo-reason plan`` sizes the embedding from ``data.tokenizer`` when ``model.vocab_size`` is not
set; building a :mod:`nemo_reason.data.tokenizer` object would import Megatron-Core (its tokenizer
base class), seconds of start-up for a command that computes arithmetic. This reads the same
files with the ``tokenizers`` / ``sentencepiece`` libraries and gives the same count as the built
tokenizer's ``vocab_size`` (a test holds them equal).
"""

from __future__ import annotations

import os
from typing import Optional

BYTE_VOCAB = 258  # 256 bytes + <eod> + <pad>, as ByteTokenizer


def vocab_size_of(name: str, path: Optional[str] = None, cache_dir: str = "") -> int:
    if name == "byte":
        return BYTE_VOCAB
    if name == "sentencepiece":
        import sentencepiece as spm

        return int(spm.SentencePieceProcessor(model_file=os.path.expanduser(str(path))).get_piece_size())
    if name in ("bundled", "bundled_digits"):
        from nemo_reason.data.bpe import bundled_tokenizer_path

        file = str(bundled_tokenizer_path(cache_dir, split_digits=name == "bundled_digits"))
    elif name == "hf":
        p = os.path.expanduser(str(path))
        file = os.path.join(p, "tokenizer.json") if os.path.isdir(p) else p
    else:
        raise ValueError(f"unknown tokenizer {name!r}")
    from tokenizers import Tokenizer

    return int(Tokenizer.from_file(file).get_vocab_size(with_added_tokens=True))
