"""The bundled_digits tokenizer: the bundled BPE with every digit its own token.

Checked: its tokenizer.json is deterministic (pinned SHA-256, like the bundled one, and a cache
entry of its own: the bundled tokenizer's file and ids are unchanged); every digit of every number
in the bundled corpora is a single token, so a number is always the same digit tokens; texts round
trip; a checkpoint's tokenizer record copies it and loading the copy gives the same ids and the same
dataset-cache identity; config validation and the light vocabulary count accept the name.
"""

import re

import pytest

from nemo_reason.data.bpe import (BUNDLED_DIGITS_SHA256, BUNDLED_SHA256, BUNDLED_VOCAB, bundled_tokenizer_path)
from nemo_reason.data.corpora import generate
from nemo_reason.data.tokenizer import build_tokenizer, file_digest


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("bundled_digits")


def test_deterministic_and_separate_from_bundled(tok):
    path = bundled_tokenizer_path(split_digits=True)
    assert file_digest(path) == BUNDLED_DIGITS_SHA256
    assert path.parent != bundled_tokenizer_path().parent
    assert file_digest(bundled_tokenizer_path()) == BUNDLED_SHA256  # the default one is untouched
    assert tok.vocab_size == BUNDLED_VOCAB and (tok.eod, tok.pad) == (0, 1)
    assert tok.unique_identifiers["tokenizer_path"] == ["bundled_digits"]
    mtime = path.stat().st_mtime_ns
    build_tokenizer("bundled_digits")
    assert path.stat().st_mtime_ns == mtime


def test_digits_are_single_tokens_and_texts_round_trip(tok):
    digit_ids = {tok.tokenize(str(d))[0] for d in range(10)}
    assert len(digit_ids) == 10 and all(len(tok.tokenize(str(d))) == 1 for d in range(10))
    for name in ("math", "mcq", "code", "prose"):
        texts = [r["text"] for r in generate(name, 30, 4)]
        ids = tok.tokenize_batch(texts)
        assert [tok.detokenize(i) for i in ids] == texts
        for text, row in zip(texts, ids):
            pieces = [tok.detokenize([i]) for i in row]
            # no token mixes a digit with anything else, so every digit of the text is one token
            assert all(len(p) == 1 for p in pieces if any(c.isdigit() for c in p)), pieces
            assert sum(i in digit_ids for i in row) == sum(c.isdigit() for c in text)
    # the same number is the same ids wherever it stands (the bundled BPE splits ` 61` and ` 46` differently)
    a, b = tok.tokenize("Ada has 61 apples."), tok.tokenize("61 + 46 = 107")
    assert tok.tokenize("61") == [i for i in a if i in digit_ids] == b[:2]
    assert re.fullmatch(r"\d+", tok.detokenize(tok.tokenize("9081726354"))) and len(tok.tokenize("9081726354")) == 10


def test_checkpoint_record_copies_and_reloads(tok, tmp_path):
    from nemo_reason.checkpoint.meta import load_tokenizer, tokenizer_record, write_meta
    from nemo_reason.config.schema import DataConfig
    from nemo_reason.data.vocab import vocab_size_of

    cfg = DataConfig(tokenizer="bundled_digits")
    cfg.validate()
    assert vocab_size_of("bundled_digits") == tok.vocab_size
    record = tokenizer_record(cfg, tok)
    assert record["sha256"] == BUNDLED_DIGITS_SHA256 and record["class"] == "BundledDigitsTokenizer"
    ckpt = tmp_path / "iter_0000003"
    ckpt.mkdir()
    written = write_meta(ckpt, {"tokenizer": record}, step=3, consumed_samples=0, layout={}, saved_at=0.0)
    assert written["tokenizer"]["file"] == "tokenizer/tokenizer.json"
    assert file_digest(ckpt / "tokenizer" / "tokenizer.json") == BUNDLED_DIGITS_SHA256
    back = load_tokenizer(ckpt)
    text = "Question: Ada has 54 tickets and gives away 39.\nSolution: 54 - 39 = 15."
    assert back.tokenize(text) == tok.tokenize(text)
    assert back.unique_identifiers["tokenizer_path"] == ["bundled_digits"]
    assert (back.vocab_size, back.eod, back.pad) == (tok.vocab_size, tok.eod, tok.pad)
