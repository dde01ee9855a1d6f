"""Train byte-level BPE tokenizers with the Hugging Face ``tokenizers`` library; the bundled one.

:func:`train_bpe` trains a GPT-2-style byte-level BPE (every byte is in the base alphabet, so
nothing is ever unknown) on an iterable of texts and writes a folder that both our ``hf``
tokenizer and ``transformers.AutoTokenizer`` load: ``tokenizer.json`` plus a
``tokenizer_config.json`` naming the end-of-document and padding tokens.

The **bundled** tokenizer (``data.tokenizer=bundled``) is such a BPE with ``BUNDLED_VOCAB`` tokens,
trained on the template corpora (math, mcq, code, and the synthetic corpus of the tiny
recipes), which are the same on every machine and Python version; the standard-library prose is
left out of its training set on purpose, as its docstrings change between Python versions. It is
built once per cache (a file lock keeps concurrent ranks from building it twice) and written
atomically. Training is deterministic: the same inputs give the same ``tokenizer.json``, checked
against ``BUNDLED_SHA256`` by the tests so a change of the ``tokenizers`` library that would
change token ids (and so every golden loss) is caught.

The **bundled_digits** tokenizer (``data.tokenizer=bundled_digits``) is the same BPE, trained on the
same texts with the same vocabulary size, except that every digit is its own pre-token (the Llama 3 /
Nemotron convention: ``Digits(individual_digits=True)`` before the byte-level split), so a number is
always its digits, one token each, and ``54 + 39`` is the same token problem wherever it occurs. It has
its own cache entry and its own pinned ``BUNDLED_DIGITS_SHA256``; the ``bundled`` tokenizer is unchanged.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

EOD, PAD = "<eod>", "<pad>"
BUNDLED_VOCAB = 1024
# Bump when the bundled training set or settings change: a new cache entry is built.
BUNDLED_VERSION = 1
BUNDLED_MIX = (("math", 3000), ("mcq", 3000), ("code", 1000))
BUNDLED_SYNTHETIC_DOCS = 2000
# SHA-256 of the bundled tokenizer.json as built with tokenizers 0.23 (tests/unit/test_tokenizers.py).
BUNDLED_SHA256 = "6482836e16cdfdba6d07a733e366ee6023c5f97fb887c651cfba35a37a297c0a"
# The same for bundled_digits (tests/unit/test_tokenizer_digits.py).
BUNDLED_DIGITS_SHA256 = "e308225621f654c8ca463e11fbf033bcc40df93e8d617582e78b4096b822ee8b"


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir: str | Path, min_frequency: int = 2,
              special_tokens: Sequence[str] = (EOD, PAD), split_digits: bool = False) -> Path:
    """Train a byte-level BPE on ``texts``; write ``out_dir/tokenizer.json`` (+ config) atomically.

    ``special_tokens[0]`` ends documents and ``special_tokens[1]`` pads; they take ids 0 and 1.
    ``split_digits``: every digit is its own pre-token, so no merge ever joins two digits (a number
    is tokenized digit by digit; a space before it stays its own token). Returns the path of
    ``tokenizer.json``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(special_tokens):
        raise ValueError(f"vocab_size={vocab_size}: a byte-level BPE needs at least {256 + len(special_tokens)} "
                         "(256 bytes + special tokens)")
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if split_digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        tok.save(str(tmp / "tokenizer.json"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": special_tokens[0],
                  "pad_token": special_tokens[1] if len(special_tokens) > 1 else special_tokens[0],
                  "model_max_length": 1 << 30}
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "tokenizer.json"


def texts_from_files(paths: Sequence[str], key: str = "text", skip_bad: bool = False,
                     max_documents: Optional[int] = None) -> Iterator[str]:
    """The texts of prepare-data's input formats, in order (a list of sentences is joined).

    A malformed line raises :class:`~nemo_reason.data.readers.PrepareError` with ``file:line``
    unless ``skip_bad``.
    """
    from nemo_reason.data.readers import PrepareError, read_chunks, text_of

    n = 0
    for chunk in read_chunks(list(paths), key):
        for i, raw in enumerate(chunk.items):
            if chunk.kind != "values" and not raw.strip():
                continue
            try:
                text = text_of(raw, chunk.kind, key)
            except ValueError as exc:
                if skip_bad:
                    continue
                raise PrepareError(f"{paths[chunk.file_index]}:{chunk.first_line + i}: {exc}") from None
            yield "".join(text) if isinstance(text, list) else text
            n += 1
            if max_documents is not None and n >= max_documents:
                return


def bundled_training_texts() -> Iterable[str]:
    from nemo_reason.data import corpus
    from nemo_reason.data.corpora import DEFAULT_SEED, generate

    for name, num in BUNDLED_MIX:
        for rec in generate(name, num, DEFAULT_SEED):
            yield rec["text"]
    for doc in corpus.generate(BUNDLED_SYNTHETIC_DOCS, DEFAULT_SEED):
        yield doc["text"]


def bundled_dir(cache_dir: str = "", split_digits: bool = False) -> Path:
    from nemo_reason.data.indexed import cache_root

    kind = "bundled-digits" if split_digits else "bundled"
    return cache_root(cache_dir) / "tokenizers" / f"{kind}-bpe{BUNDLED_VOCAB}-v{BUNDLED_VERSION}"


def bundled_tokenizer_path(cache_dir: str = "", split_digits: bool = False) -> Path:
    """``tokenizer.json`` of the bundled tokenizer (``split_digits``: of bundled_digits), trained into
    the cache on first use."""
    out = bundled_dir(cache_dir, split_digits)
    path = out / "tokenizer.json"
    if path.is_file():
        return path
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other ranks wait here, then find it built
        if not path.is_file():
            train_bpe(bundled_training_texts(), BUNDLED_VOCAB, out, split_digits=split_digits)
    return path
