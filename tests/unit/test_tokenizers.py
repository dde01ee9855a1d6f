"""Tokenizers: Hugging Face tokenizer.json and SentencePiece files round-trip; the bundled BPE is
deterministic; train-tokenizer writes a tokenizer the hf loader reads; config errors are clear."""

from __future__ import annotations

import json
import pickle

import pytest

from nemo_reason.config.schema import ConfigError, DataConfig
from nemo_reason.data.tokenizer import TokenizerError, build_tokenizer, file_digest, parse_tokenizer_arg

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: Ada has 12 apples and gets 5 more. How many apples does Ada have now?",
    "def add(a, b):\n    return a + b\n",
    "Unicode too: café, naïve, 東京, emoji 🙂.",
] * 20


def _train_hf(tmp_path, with_config: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXTS, trainer)
    folder = tmp_path / "hf"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    if with_config:
        (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "</s>"}}))
    return folder, tok


def test_hf_tokenizer_json_round_trip(tmp_path):
    folder, ref = _train_hf(tmp_path, with_config=False)
    for path in (folder, folder / "tokenizer.json"):
        tok = build_tokenizer("hf", str(path))
        assert tok.eod == ref.token_to_id("<|endoftext|>")
        assert tok.vocab_size == ref.get_vocab_size()
        for text in TEXTS[:4]:
            ids = tok.tokenize(text)
            assert ids == ref.encode(text).ids and tok.eod not in ids
            assert tok.detokenize(ids + [tok.eod]) == text
        assert tok.tokenize_batch(TEXTS[:4]) == [tok.tokenize(t) for t in TEXTS[:4]]
        assert tok.unique_identifiers["sha256"] == file_digest(folder / "tokenizer.json")
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.tokenize(TEXTS[3]) == tok.tokenize(TEXTS[3])


def test_hf_eos_from_config_and_errors(tmp_path):
    folder, ref = _train_hf(tmp_path, with_config=True)
    assert build_tokenizer("hf", str(folder)).eod == ref.token_to_id("</s>")
    with pytest.raises(TokenizerError, match="needs a path"):
        build_tokenizer("hf")
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        build_tokenizer("hf", str(tmp_path))
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(TokenizerError, match="not a Hugging Face tokenizer.json"):
        build_tokenizer("hf", str(bad))


def test_sentencepiece_round_trip(tmp_path):
    import sentencepiece as spm

    prefix = tmp_path / "sp"
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS), model_prefix=str(prefix), vocab_size=400,
                                   model_type="bpe", character_coverage=1.0, byte_fallback=True,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False,
                                   minloglevel=2)
    tok = build_tokenizer("sentencepiece", f"{prefix}.model")
    ref = spm.SentencePieceProcessor(model_file=f"{prefix}.model")
    assert tok.eod == ref.eos_id() and tok.vocab_size == ref.get_piece_size()
    for text in TEXTS[:4]:
        ids = tok.tokenize(text)
        assert ids == ref.encode(text)
        assert tok.detokenize(ids) == text
    assert pickle.loads(pickle.dumps(tok)).tokenize(TEXTS[0]) == tok.tokenize(TEXTS[0])
    assert parse_tokenizer_arg(f"{prefix}.model") == ("sentencepiece", f"{prefix}.model")
    with pytest.raises(TokenizerError, match="not found"):
        build_tokenizer("sentencepiece", str(tmp_path / "missing.model"))


def test_bundled_tokenizer_is_deterministic_and_cached(tmp_path):
    from nemo_reason.data.bpe import BUNDLED_SHA256, BUNDLED_VOCAB, bundled_tokenizer_path
    from nemo_reason.data.corpora import generate

    tok = build_tokenizer("bundled")
    path = bundled_tokenizer_path()
    # Same corpora + same library -> the same file on every machine; a changed library shows here
    # (and would change every token id and golden loss).
    assert file_digest(path) == BUNDLED_SHA256
    assert tok.vocab_size == BUNDLED_VOCAB and (tok.eod, tok.pad) == (0, 1)
    assert tok.unique_identifiers["tokenizer_path"] == ["bundled"]
    mtime = path.stat().st_mtime_ns
    build_tokenizer("bundled")
    assert path.stat().st_mtime_ns == mtime
    for name in ("math", "mcq", "code", "prose"):
        texts = [r["text"] for r in generate(name, 20, 4)]
        ids = tok.tokenize_batch(texts)
        assert [tok.detokenize(i) for i in ids] == texts
        assert max(map(max, ids)) < BUNDLED_VOCAB
        if name != "prose":  # the training domains compress well
            assert sum(len(t.encode()) for t in texts) / sum(map(len, ids)) > 2.0


def test_train_tokenizer_cli(tmp_path):
    from nemo_reason.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"body": t}) + "\n" for t in TEXTS))
    out = tmp_path / "tok"
    assert main(["train-tokenizer", "--input", str(data), "--output", str(out), "--vocab-size", "300",
                 "--json-keys", "body"]) == 0
    tok = build_tokenizer("hf", str(out))
    assert tok.vocab_size == 300 and tok.eod == 0 and tok.pad == 1
    assert tok.detokenize(tok.tokenize(TEXTS[3])) == TEXTS[3]
    assert main(["train-tokenizer", "--input", str(data), "--output", str(out), "--vocab-size", "100"]) == 2
    assert main(["train-tokenizer", "--input", str(tmp_path / "none.jsonl"), "--output", str(out)]) == 2


def test_config_validation(tmp_path):
    DataConfig(tokenizer="bundled").validate()
    with pytest.raises(ConfigError, match="use byte, bundled, hf or sentencepiece"):
        DataConfig(tokenizer="gpt2").validate()
    with pytest.raises(ConfigError, match="needs data.tokenizer_path"):
        DataConfig(tokenizer="hf").validate()
    DataConfig(tokenizer="sentencepiece", tokenizer_path=str(tmp_path / "x.model")).validate()  # reads no file
    from nemo_reason.preflight import check_data

    with pytest.raises(ConfigError, match="not found.*train-tokenizer"):
        check_data(DataConfig(tokenizer="sentencepiece", tokenizer_path=str(tmp_path / "x.model")))
    with pytest.raises(ConfigError, match="reads no file"):
        DataConfig(tokenizer="byte", tokenizer_path="x").validate()
    folder, _ = _train_hf(tmp_path, with_config=False)
    DataConfig(tokenizer="hf", tokenizer_path=str(folder)).validate()
    check_data(DataConfig(tokenizer="hf", tokenizer_path=str(folder)))
    assert parse_tokenizer_arg("bundled") == ("bundled", None)
    assert parse_tokenizer_arg(str(folder)) == ("hf", str(folder))
    with pytest.raises(TokenizerError, match="neither a registered tokenizer"):
        parse_tokenizer_arg("gpt2")
