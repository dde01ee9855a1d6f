"""Supervised fine-tuning data: conversations -> tokenized, assistant-only-loss samples, packed or not.

Sources are JSONL files (plain, ``.gz``, ``.zst``) or bundled corpora (``bundled:math``,
``bundled:mcq:500``: name and optional size, :mod:`nemo_reason.data.corpora`; record filters as
in a blend, ``bundled:math:2000@difficulty<=1``: of the 2,000 records, the easy ones; ``quality``
is not a filter here). A record is one of

* ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}``;
* ``{"prompt": "...", "response": "..."}`` (optional ``"system"``): one user turn, one answer;
* a bundled-corpus record (``domain`` math, mcq or code, no ``messages``/``prompt``): the question
  becomes the user turn and the worked solution / letter / reference code the answer
  (:data:`SFT_CORPORA`).

Each conversation is rendered by a chat template (:mod:`nemo_reason.data.chat_template`) into
segments that are tokenized one by one (so a token never straddles the assistant boundary), and
becomes a document whose loss mask is 1 exactly on the assistant's tokens (its end-of-turn marker
and the appended eod included). :class:`SFTDataset` packs the documents (:mod:`nemo_reason.data.
packing`) into samples of ``seq_length`` or keeps one per sample, after a seeded shuffle.

Bad records (malformed JSON, no ``messages`` nor ``prompt``/``response``, an unknown role, empty
content, no assistant turn, longer than ``seq_length`` once tokenized) raise a ConfigError naming
``file:line``, or with ``skip_bad=True`` are skipped and counted by reason (``dataset.stats``).
Left out: tool calls, multi-turn masking options (every assistant turn is trained), Parquet.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from nemo_reason.config.errors import ConfigError
from nemo_reason.data.chat_template import ROLES, ChatTemplate, build_chat_template
from nemo_reason.data.packing import Document, pack, packed_sample, unpacked_sample
from nemo_reason.data.readers import open_binary
from nemo_reason.registry import Registry

Messages = List[Dict[str, str]]
SFT_CORPORA: Registry = Registry("SFT corpus conversion")


class BadRecord(ValueError):
    """A record that cannot be a training conversation; ``reason`` is its short category."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@SFT_CORPORA.register("math", "question -> step-by-step solution and 'Answer: N'")
def _math(rec: dict) -> Messages:
    return [{"role": "user", "content": rec["question"]},
            {"role": "assistant", "content": f"{rec['solution']}\nAnswer: {rec['answer']}"}]


@SFT_CORPORA.register("mcq", "question and lettered choices -> 'Answer: X'")
def _mcq(rec: dict) -> Messages:
    letters = "ABCDEFGH"
    lines = [rec["question"]] + [f"{letters[i]}. {c}" for i, c in enumerate(rec["choices"])]
    return [{"role": "user", "content": "\n".join(lines) + "\nAnswer with the letter of the correct choice."},
            {"role": "assistant", "content": f"Answer: {rec['answer']}"}]


@SFT_CORPORA.register("code", "task -> reference solution in a python code block")
def _code(rec: dict) -> Messages:
    return [{"role": "user", "content": rec["prompt"]},
            {"role": "assistant", "content": f"```python\n{rec['solution']}```"}]


def conversation_of(rec) -> Messages:
    """The validated messages of one record (raises :class:`BadRecord`)."""
    if not isinstance(rec, dict):
        raise BadRecord("not an object", f"a record must be a JSON object, got {type(rec).__name__}")
    if "messages" in rec:
        messages = rec["messages"]
        if not isinstance(messages, list):
            raise BadRecord("no messages", "'messages' must be a list of {role, content} objects")
    elif rec.get("domain") in SFT_CORPORA and "response" not in rec:  # bundled code records have a prompt
        messages = SFT_CORPORA.get(rec["domain"])(rec)
    elif "prompt" in rec or "response" in rec:
        messages = ([{"role": "system", "content": rec["system"]}] if rec.get("system") else []) + [
            {"role": "user", "content": rec.get("prompt")}, {"role": "assistant", "content": rec.get("response")}]
    else:
        raise BadRecord("no messages", "the record has neither 'messages' nor 'prompt'/'response' (nor is it a "
                        f"bundled {'/'.join(SFT_CORPORA.names())} record)")
    out = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLES:
            raise BadRecord("unknown role", f"message {i} has role {role!r}; use one of {', '.join(ROLES)}")
        content = m.get("content")
        if not isinstance(content, str) or not content.strip():
            raise BadRecord("empty content", f"message {i} ({role}) has empty or non-text content")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise BadRecord("no assistant turn", "the conversation has no assistant turn, so nothing to train on")
    return out


def tokenize_conversation(messages: Messages, tokenizer, template: ChatTemplate) -> Document:
    """(ids, trained) of one conversation: trained exactly on the assistant's segments and the eod."""
    segments = template.segments(messages)
    ids: List[int] = []
    trained: List[bool] = []
    for text, is_assistant in segments:
        piece = tokenizer.tokenize(text)
        ids += piece
        trained += [is_assistant] * len(piece)
    if template.needs_eod(segments):
        ids.append(tokenizer.eod)
        trained.append(messages[-1]["role"] == "assistant")
    return np.asarray(ids, dtype=np.int64), np.asarray(trained, dtype=bool)


def _records(source: str, cache_dir: str) -> Iterator[Tuple[str, object]]:
    """(``file:line``, parsed record or the BadRecord) of one source, in order."""
    if source.startswith("bundled:"):
        from nemo_reason.data.corpora import build_bundled

        body, at, _ = source[len("bundled:"):].partition("@")
        name, _, num = body.partition(":")
        if name not in SFT_CORPORA:
            raise ConfigError(f"SFT source {source}: no SFT conversion for corpus {name!r}; use one of "
                              f"{', '.join('bundled:' + n for n in SFT_CORPORA.names())}")
        if at:  # record filters (bundled:math:2000@difficulty<=1): the first NUM records, then the filter
            yield from _filtered_records(source)
            return
        path = str(build_bundled(name, int(num) if num else None, cache_dir=cache_dir))
    else:
        path = str(Path(source).expanduser())
        if not Path(path).is_file():
            raise ConfigError(f"SFT source {source}: file not found (give a JSONL file or bundled:NAME)")
    with open_binary(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{line_no}", json.loads(line)
            except ValueError as exc:
                yield f"{path}:{line_no}", BadRecord("malformed JSON", f"not valid JSON ({exc})")


def _filtered_records(source: str) -> Iterator[Tuple[str, object]]:
    """The records of a filtered bundled source (the grammar of :mod:`nemo_reason.data.sources`)."""
    from nemo_reason.data.corpora import generate
    from nemo_reason.data.sources import SourceError, parse_source

    try:
        spec = parse_source(source)
    except SourceError as exc:
        raise ConfigError(f"SFT source {source}: {exc}") from None
    for i, rec in enumerate(generate(spec.corpus, spec.num, spec.seed), start=1):
        if spec.keep(rec, None):
            yield f"{source}#{i}", rec


def read_documents(sources: Sequence[str], tokenizer, template: ChatTemplate, seq_length: int,
                   skip_bad: bool = False, cache_dir: str = "") -> Tuple[List[Document], List[str], Counter]:
    """Documents of all sources, their ``file:line``, and the skipped records counted by reason."""
    docs: List[Document] = []
    where: List[str] = []
    skipped: Counter = Counter()
    for source in sources:
        for loc, rec in _records(source, cache_dir):
            try:
                if isinstance(rec, BadRecord):
                    raise rec
                doc = tokenize_conversation(conversation_of(rec), tokenizer, template)
                if len(doc[0]) > seq_length:
                    raise BadRecord("too long", f"the conversation is {len(doc[0])} tokens, longer than "
                                    f"seq_length={seq_length} (raise seq_length)")
            except BadRecord as exc:
                if not skip_bad:
                    raise ConfigError(f"{loc}: {exc}; fix the record, or pass skip_bad=True to skip and count "
                                      "such records") from None
                skipped[exc.reason] += 1
                continue
            docs.append(doc)
            where.append(loc)
    if not docs:
        raise ConfigError(f"SFT sources {', '.join(sources)} hold no usable conversation"
                          + (f" (skipped: {dict(skipped)})" if skipped else ""))
    return docs, where, skipped


class SFTDataset:
    """Map-style dataset of SFT samples (dicts of tensors, see :mod:`nemo_reason.data.packing`).

    The documents are shuffled with ``seed``, then packed (``packed=True``: ``tokens``, ``labels``,
    ``loss_mask``, ``position_ids`` ``[seq_length]`` plus ``cu_seqlens`` and ``seq_idx``) or kept
    one per sample (the four GPTDataset keys). ``num_samples`` beyond one epoch repeats the samples,
    each further epoch in its own seeded order; ``len`` is ``num_samples`` (default: one epoch).
    ``sample_documents[i]`` are the document indices (into ``documents``) of epoch sample ``i``.
    """

    def __init__(self, documents: Sequence[Document], seq_length: int, packed: bool = True,
                 pack_method: str = "first_fit", seed: int = 1234, num_samples: Optional[int] = None,
                 where: Optional[Sequence[str]] = None, skipped: Optional[Counter] = None):
        self.seq_length, self.packed, self.seed = seq_length, packed, seed
        order = np.random.default_rng(seed).permutation(len(documents))
        self.documents = [documents[i] for i in order]
        self.where = [where[i] for i in order] if where is not None else None
        lengths = [len(ids) for ids, _ in self.documents]
        self.sample_documents = (pack(lengths, seq_length, pack_method) if packed
                                 else [[i] for i in range(len(lengths))])
        self.epoch_size = len(self.sample_documents)
        self.num_samples = self.epoch_size if num_samples is None else num_samples
        self._orders: Dict[int, np.ndarray] = {}
        tokens = sum(lengths)
        self.stats = {
            "conversations": len(lengths),
            "samples_per_epoch": self.epoch_size,
            "tokens": tokens,
            "trained_tokens": int(sum(int(t[1:].sum()) for _, t in self.documents)),
            "fill": tokens / (self.epoch_size * seq_length),
            "skipped": dict(skipped or {}),
        }

    def __len__(self) -> int:
        return self.num_samples

    def _epoch_index(self, idx: int) -> int:
        epoch, i = divmod(idx, self.epoch_size)
        if epoch == 0:
            return i
        if epoch not in self._orders:
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.epoch_size)
        return int(self._orders[epoch][i])

    def __getitem__(self, idx: int):
        if not 0 <= idx < self.num_samples:
            raise IndexError(f"sample {idx} of {self.num_samples}")
        docs = [self.documents[d] for d in self.sample_documents[self._epoch_index(idx)]]
        if self.packed:
            return packed_sample(docs, self.seq_length)
        return unpacked_sample(docs[0], self.seq_length)


def build_sft_dataset(sources: Sequence[str], tokenizer, seq_length: int, template: str = "auto",
                      packed: bool = True, pack_method: str = "first_fit", seed: int = 1234,
                      skip_bad: bool = False, num_samples: Optional[int] = None, cache_dir: str = "") -> SFTDataset:
    """Read, validate, tokenize and pack ``sources`` (JSONL paths or ``bundled:NAME[:NUM]``)."""
    chat = build_chat_template(template, tokenizer)
    docs, where, skipped = read_documents(sources, tokenizer, chat, seq_length, skip_bad, cache_dir)
    return SFTDataset(docs, seq_length, packed=packed, pack_method=pack_method, seed=seed,
                      num_samples=num_samples, where=where, skipped=skipped)
