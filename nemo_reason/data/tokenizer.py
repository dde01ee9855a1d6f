"""Tokenizers with the interface Megatron-Core's datasets expect, behind one registry.

=============  ==============================================================  ==============
name           what                                                            ``path``
=============  ==============================================================  ==============
byte           UTF-8 bytes (ids 0-255) plus ``<eod>`` and ``<pad>``; no files   none
bundled        byte-level BPE, 1024 tokens, trained on the bundled corpora      none (cache)
               once per cache (:mod:`nemo_reason.data.bpe`)
hf             a Hugging Face ``tokenizers`` tokenizer: ``tokenizer.json`` or   file or folder
               a folder holding one (as ``save_pretrained`` writes); read from
               disk only, never the hub
sentencepiece  a SentencePiece ``.model`` file                                  file
=============  ==============================================================  ==============

``bundled_digits`` (no path, cache) is the bundled BPE with every digit its own token: numbers are
split digit by digit, as the Llama 3 / Nemotron tokenizers do (:mod:`nemo_reason.data.bpe`).

Every tokenizer is a Megatron ``MegatronLegacyTokenizer``: ``tokenize`` (a list of ids, no
special tokens added), ``detokenize``, ``vocab``, ``vocab_size``, ``eod``, ``pad`` and the
``unique_identifiers`` Megatron's ``GPTDataset`` hashes into its index cache names (for file
tokenizers these include the file's SHA-256, so a changed file never reuses a stale cache).
``tokenize_batch`` encodes many texts at once where the library can.

The end-of-document token of an ``hf`` tokenizer is ``eos_token`` from a ``tokenizer_config.json``
beside the ``tokenizer.json`` when there is one, else the first of ``EOD_CANDIDATES`` in its
vocabulary; a SentencePiece model's is its ``eos`` piece.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from megatron.core.datasets.megatron_tokenizer import MegatronLegacyTokenizer

from nemo_reason.models.vocab import padded_vocab_size  # noqa: F401  (re-exported for old callers)
from nemo_reason.registry import Registry

TOKENIZERS: Registry = Registry("tokenizer")
EOD_CANDIDATES = ("<eod>", "<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "<|im_end|>")
PAD_CANDIDATES = ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>")


class TokenizerError(ValueError):
    """A tokenizer file is missing or unusable; the message says which and what to do."""


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@TOKENIZERS.register("byte")
class ByteTokenizer(MegatronLegacyTokenizer):
    """UTF-8 bytes plus two special tokens."""

    EOD = 256
    PAD = 257

    def __init__(self):
        super().__init__("byte")

    @classmethod
    def build(cls, path: Optional[str] = None, cache_dir: str = "") -> "ByteTokenizer":
        return cls()

    def tokenize(self, text: str) -> List[int]:
        return list(text.encode("utf-8"))

    def tokenize_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return [list(t.encode("utf-8")) for t in texts]

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


def tokenizer_json(path: str | Path) -> Path:
    """The ``tokenizer.json`` that ``path`` (the file, or a folder holding it) names."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
        if not p.is_file():
            raise TokenizerError(f"{path}: no tokenizer.json in this folder (save one with the `tokenizers` library "
                                 "or `save_pretrained`, or train one with `nemo-reason train-tokenizer`)")
    elif not p.is_file():
        raise TokenizerError(f"{path}: tokenizer file not found (give a tokenizer.json, a folder holding one, "
                             "or a SentencePiece .model)")
    return p


def _special(cfg: dict, key: str) -> Optional[str]:
    val = cfg.get(key)
    return val.get("content") if isinstance(val, dict) else val


@TOKENIZERS.register("hf")
class HFTokenizer(MegatronLegacyTokenizer):
    """A Hugging Face `tokenizers` tokenizer from tokenizer.json or a folder holding one."""

    def __init__(self, path: str, eod_token: Optional[str] = None, pad_token: Optional[str] = None):
        from tokenizers import Tokenizer

        self.path = str(path)
        file = tokenizer_json(path)
        try:
            self._tok = Tokenizer.from_file(str(file))
        except Exception as exc:  # the library raises a bare Exception on a malformed file
            raise TokenizerError(f"{file}: not a Hugging Face tokenizer.json ({exc})") from None
        cfg_file = file.parent / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        vocab = self._tok.get_vocab(with_added_tokens=True)
        eod_name = eod_token or _special(cfg, "eos_token") or next((t for t in EOD_CANDIDATES if t in vocab), None)
        if eod_name is None or eod_name not in vocab:
            raise TokenizerError(f"{file}: no end-of-document token found (looked for eos_token in "
                                 f"tokenizer_config.json and {', '.join(EOD_CANDIDATES)}); add one to the vocabulary")
        pad_name = pad_token or _special(cfg, "pad_token") or next((t for t in PAD_CANDIDATES if t in vocab), None)
        self._eod = vocab[eod_name]
        self._pad = vocab.get(pad_name, self._eod) if pad_name else self._eod
        super().__init__(str(file), sha256=file_digest(file), eod=eod_name)

    @classmethod
    def build(cls, path: Optional[str] = None, cache_dir: str = "") -> "HFTokenizer":
        if not path:
            raise TokenizerError("the hf tokenizer needs a path: data.tokenizer_path=/path/to/tokenizer.json "
                                 "(or a folder holding one)")
        return cls(path)

    def __reduce__(self):
        return (type(self), (self.path,))

    def tokenize(self, text: str) -> List[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def tokenize_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def detokenize(self, ids) -> str:
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def vocab(self):
        return self._tok.get_vocab(with_added_tokens=True)

    @property
    def inv_vocab(self):
        return {v: k for k, v in self.vocab.items()}

    @property
    def eod(self) -> int:
        return self._eod

    @property
    def pad(self) -> int:
        return self._pad


@TOKENIZERS.register("bundled")
class BundledTokenizer(HFTokenizer):
    """Byte-level BPE (1024 tokens) trained on the bundled corpora, built once into the cache."""

    def __init__(self, cache_dir: str = ""):
        from nemo_reason.data.bpe import bundled_tokenizer_path

        self.cache_dir = cache_dir
        super().__init__(str(bundled_tokenizer_path(cache_dir)))
        # Identify it by content, not by where the cache happens to be.
        self.unique_identifiers["tokenizer_path"] = ["bundled"]
        self.unique_description = json.dumps(self.unique_identifiers, indent=4)

    @classmethod
    def build(cls, path: Optional[str] = None, cache_dir: str = "") -> "BundledTokenizer":
        return cls(cache_dir)

    def __reduce__(self):
        return (type(self), (self.cache_dir,))


@TOKENIZERS.register("bundled_digits")
class BundledDigitsTokenizer(HFTokenizer):
    """The bundled BPE (1024 tokens) with single-digit number tokens, built once into the cache."""

    def __init__(self, cache_dir: str = ""):
        from nemo_reason.data.bpe import bundled_tokenizer_path

        self.cache_dir = cache_dir
        super().__init__(str(bundled_tokenizer_path(cache_dir, split_digits=True)))
        self.unique_identifiers["tokenizer_path"] = ["bundled_digits"]
        self.unique_description = json.dumps(self.unique_identifiers, indent=4)

    @classmethod
    def build(cls, path: Optional[str] = None, cache_dir: str = "") -> "BundledDigitsTokenizer":
        return cls(cache_dir)

    def __reduce__(self):
        return (type(self), (self.cache_dir,))


@TOKENIZERS.register("sentencepiece")
class SentencePieceTokenizer(MegatronLegacyTokenizer):
    """A SentencePiece .model file; its eos piece ends documents."""

    def __init__(self, path: str):
        import sentencepiece as spm

        self.path = str(path)
        file = Path(path).expanduser()
        if not file.is_file():
            raise TokenizerError(f"{path}: SentencePiece model not found (give the .model file)")
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(file))
        except (RuntimeError, OSError) as exc:
            raise TokenizerError(f"{path}: not a SentencePiece model ({exc})") from None
        if self._sp.eos_id() < 0:
            raise TokenizerError(f"{path}: the SentencePiece model has no eos piece (eos_id=-1); train it with "
                                 "eos_id >= 0 so documents can be ended")
        super().__init__(str(file), sha256=file_digest(file))

    @classmethod
    def build(cls, path: Optional[str] = None, cache_dir: str = "") -> "SentencePieceTokenizer":
        if not path:
            raise TokenizerError("the sentencepiece tokenizer needs a path: data.tokenizer_path=/path/to/tokenizer.model")
        return cls(path)

    def __reduce__(self):
        return (type(self), (self.path,))

    def tokenize(self, text: str) -> List[int]:
        return self._sp.encode(text)

    def tokenize_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return self._sp.encode(list(texts))

    def detokenize(self, ids) -> str:
        return self._sp.decode([int(i) for i in np.asarray(ids).reshape(-1)])

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def vocab(self):
        return {self._sp.id_to_piece(i): i for i in range(self.vocab_size)}

    @property
    def inv_vocab(self):
        return {i: self._sp.id_to_piece(i) for i in range(self.vocab_size)}

    @property
    def eod(self) -> int:
        return self._sp.eos_id()

    @property
    def pad(self) -> int:
        return self._sp.pad_id() if self._sp.pad_id() >= 0 else self._sp.eos_id()


def build_tokenizer(name: str, path: Optional[str] = None, cache_dir: str = "") -> MegatronLegacyTokenizer:
    """The tokenizer registered as ``name``; ``path`` for file tokenizers (hf, sentencepiece)."""
    return TOKENIZERS.get(name).build(path=path, cache_dir=cache_dir)


def parse_tokenizer_arg(arg: str) -> Tuple[str, Optional[str]]:
    """``(name, path)`` from a registry name or a path (a ``.model`` is SentencePiece, else hf)."""
    if arg in TOKENIZERS:
        return arg, None
    p = Path(arg).expanduser()
    if p.suffix == ".model":
        return "sentencepiece", arg
    if p.suffix == ".json" or p.is_dir() or os.sep in arg:
        return "hf", arg
    raise TokenizerError(f"--tokenizer {arg}: neither a registered tokenizer ({', '.join(TOKENIZERS.names())}) nor "
                         "a path (tokenizer.json, a folder holding one, or a SentencePiece .model)")
