"""SFT data: chat templates, assistant-only loss masks, packing, bad records (no model)."""

import json
from collections import Counter

import pytest
import torch

from nemo_reason.config.errors import ConfigError
from nemo_reason.data.bpe import train_bpe
from nemo_reason.data.chat_template import ChatMLTemplate, JinjaTemplate, build_chat_template
from nemo_reason.data.loader import micro_batches
from nemo_reason.data.packing import pack
from nemo_reason.data.sft import build_sft_dataset
from nemo_reason.data.tokenizer import ByteTokenizer, HFTokenizer

CONV = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "2+3 = 5."},
        {"role": "user", "content": "And 4+4?"},
        {"role": "assistant", "content": "8"}]

QWEN_LIKE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
             "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
             "{% endif %}")


def _write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def _conversations(n, seed=0):
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        q = " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(rng.randint(1, 12)))
        a = " ".join(rng.choice(["one", "two", "three"]) for _ in range(rng.randint(1, 20)))
        if i % 3 == 0:
            out.append({"prompt": f"q{i}: {q}", "response": f"a{i}: {a}"})
        else:
            out.append({"messages": [{"role": "user", "content": f"q{i}: {q}"},
                                     {"role": "assistant", "content": f"a{i}: {a}"},
                                     {"role": "user", "content": "more?"},
                                     {"role": "assistant", "content": f"b{i}"}]})
    return out


def _runs(mask):
    """[start, end) of each run of 1s in a 1-D mask."""
    runs, start = [], None
    for j, m in enumerate(mask.tolist() + [0]):
        if m and start is None:
            start = j
        elif not m and start is not None:
            runs.append((start, j))
            start = None
    return runs


def test_chatml_render_and_generation_prompt():
    t = ChatMLTemplate()
    assert t.render(CONV[:3]) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
                                  "<|im_start|>assistant\n2+3 = 5.<|im_end|>\n")
    assert t.generation_prompt(CONV[:2]).endswith("What is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    assert [trained for _, trained in t.segments(CONV[:3])] == [False, False, False, True]


def test_loss_mask_exactly_on_assistant_tokens(tmp_path):
    tok = ByteTokenizer()
    ds = build_sft_dataset([_write(tmp_path / "c.jsonl", [{"messages": CONV}])], tok, 256, packed=False)
    s = ds[0]
    assert set(s) == {"tokens", "labels", "loss_mask", "position_ids"}
    assert s["tokens"].dtype == s["labels"].dtype == s["position_ids"].dtype == torch.int64
    assert s["loss_mask"].dtype == torch.float32 and s["tokens"].shape == (256,)
    runs = _runs(s["loss_mask"])
    texts = [tok.detokenize(s["labels"][a:b]) for a, b in runs]
    assert texts == ["2+3 = 5.<|im_end|>\n", "8<|im_end|>\n"]
    # The appended eod is the last trained label; nothing after it is trained.
    n = int((s["tokens"] != 0).sum())
    assert s["labels"][runs[-1][1] - 1] == tok.eod and runs[-1][1] == n - 1
    assert s["loss_mask"][n - 1:].sum() == 0
    # Labels are the next tokens (GPTDataset's shift).
    assert torch.equal(s["labels"][:n - 1], s["tokens"][1:n])
    assert torch.equal(s["position_ids"], torch.arange(256))


def test_packing_positions_boundaries_and_parity(tmp_path):
    tok = ByteTokenizer()
    src = [_write(tmp_path / "c.jsonl", _conversations(40))]
    packed = build_sft_dataset(src, tok, 320, seed=7)
    flat = build_sft_dataset(src, tok, 320, seed=7, packed=False)
    assert len(packed) < len(flat) == 40
    assert packed.stats["fill"] > 0.7 and packed.stats["conversations"] == 40
    seen = []
    for i in range(len(packed)):
        s = packed[i]
        cu, seq_idx = s["cu_seqlens"], s["seq_idx"]
        assert cu.dtype == seq_idx.dtype == torch.int32 and cu[0] == 0 and cu[-1] == 320
        docs = packed.sample_documents[i]
        for k in range(len(cu) - 1):
            a, b = int(cu[k]), int(cu[k + 1])
            assert torch.equal(s["position_ids"][a:b], torch.arange(b - a))
            assert (seq_idx[a:b] == k).all()
            if k < len(docs):  # a document: same tokens, labels and mask as it has on its own
                one = flat[flat.sample_documents.index([docs[k]])]
                assert b - a == len(packed.documents[docs[k]][0])
                for key in ("tokens", "labels", "loss_mask"):
                    assert torch.equal(s[key][a:b], one[key][:b - a]), key
                assert s["loss_mask"][b - 1] == 0 and s["labels"][b - 1] == 0  # no label across the boundary
                assert one["loss_mask"][b - a:].sum() == 0
                seen.append(docs[k])
            else:  # the padded tail
                assert s["loss_mask"][a:b].sum() == 0 and (s["tokens"][a:b] == 0).all()
    assert sorted(seen) == list(range(40))
    def multiset(ds):
        return Counter(t for i in range(len(ds)) for t in ds[i]["tokens"].tolist() if t)
    assert multiset(packed) == multiset(flat)
    assert sum(packed[i]["loss_mask"].sum() for i in range(len(packed))) == \
        sum(flat[i]["loss_mask"].sum() for i in range(len(flat)))


def test_pack_methods_and_determinism(tmp_path):
    assert pack([5, 4, 3, 2], 8, "sequential") == [[0], [1, 2], [3]]
    assert pack([5, 4, 3, 2], 8, "first_fit") == [[0, 2], [1, 3]]
    src = [_write(tmp_path / "c.jsonl", _conversations(30))]
    a = build_sft_dataset(src, ByteTokenizer(), 320, seed=1, num_samples=70)
    b = build_sft_dataset(src, ByteTokenizer(), 320, seed=1, num_samples=70)
    c = build_sft_dataset(src, ByteTokenizer(), 320, seed=2)
    assert len(a) == 70 and 2 * a.epoch_size < 70
    assert all(torch.equal(a[i]["tokens"], b[i]["tokens"]) for i in range(70))
    assert not torch.equal(a[0]["tokens"], c[0]["tokens"])
    # A second epoch holds the same samples in another order.
    e0 = sorted(tuple(a[i]["tokens"].tolist()) for i in range(a.epoch_size))
    e1 = [tuple(a[i]["tokens"].tolist()) for i in range(a.epoch_size, 2 * a.epoch_size)]
    assert sorted(e1) == e0 and e1 != [tuple(a[i]["tokens"].tolist()) for i in range(a.epoch_size)]
    with pytest.raises(IndexError):
        a[70]


def test_collate_passes_packed_keys(tmp_path):
    src = [_write(tmp_path / "c.jsonl", _conversations(30))]
    ds = build_sft_dataset(src, ByteTokenizer(), 320, seed=3)
    batch = next(micro_batches(ds, 0, 4, 0, 1))
    assert batch["tokens"].shape == batch["seq_idx"].shape == (4, 320)
    width = max(len(ds[i]["cu_seqlens"]) for i in range(4))
    assert batch["cu_seqlens"].shape == (4, width) and batch["cu_seqlens"].dtype == torch.int32
    for i in range(4):
        cu = ds[i]["cu_seqlens"]
        assert torch.equal(batch["cu_seqlens"][i, :len(cu)], cu) and (batch["cu_seqlens"][i, len(cu):] == -1).all()


BAD = [
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}, "role 'bot'"),
    ({"prompt": "hi", "response": "  "}, "empty"),
    ({"text": "just text"}, "neither 'messages'"),
    ("{not json", "not valid JSON"),
    ({"prompt": "hi", "response": "x" * 300}, "longer than seq_length=128"),
]


@pytest.mark.parametrize("record,words", BAD)
def test_bad_records_stop_with_file_line(tmp_path, record, words):
    path = _write(tmp_path / "bad.jsonl", [{"prompt": "ok", "response": "fine"}, "", record])
    with pytest.raises(ConfigError) as err:
        build_sft_dataset([path], ByteTokenizer(), 128)
    assert f"{path}:3:" in str(err.value) and words in str(err.value) and "skip_bad=True" in str(err.value)


def test_bad_records_skipped_and_counted(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [{"prompt": "ok", "response": "fine"}] + [r for r, _ in BAD] + [BAD[0][0]])
    ds = build_sft_dataset([path], ByteTokenizer(), 128, skip_bad=True)
    assert ds.stats["conversations"] == 1 and len(ds) == 1
    assert ds.stats["skipped"] == {"no assistant turn": 2, "unknown role": 1, "empty content": 1, "no messages": 1,
                                   "malformed JSON": 1, "too long": 1}
    with pytest.raises(ConfigError, match="no usable conversation"):
        build_sft_dataset([_write(tmp_path / "none.jsonl", [BAD[0][0]])], ByteTokenizer(), 128, skip_bad=True)


def test_bundled_corpora_become_conversations():
    tok = ByteTokenizer()
    for name, expect in (("math", "\nAnswer: "), ("mcq", "Answer: "), ("code", "```python\n")):
        ds = build_sft_dataset([f"bundled:{name}:12"], tok, 1024, packed=False)
        assert ds.stats["conversations"] == 12, name
        s = ds[0]
        trained = tok.detokenize(s["labels"][s["loss_mask"].bool()])
        assert expect in trained and trained.count("<|im_end|>") == 1, (name, trained)
        assert "Question" not in trained and "<|im_start|>" not in trained
    with pytest.raises(ConfigError, match="bundled:math"):
        build_sft_dataset(["bundled:prose"], tok, 128)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "tok"
    texts = [json.dumps(c) for c in _conversations(200)] + [ChatMLTemplate().render(CONV)] * 20
    train_bpe(texts, 400, out, special_tokens=("<|im_end|>", "<pad>", "<|im_start|>"))
    return out


def test_hf_chat_template_from_tokenizer_config(hf_dir):
    cfg = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert build_chat_template("auto", HFTokenizer(str(hf_dir))).__class__ is ChatMLTemplate  # no template yet
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": QWEN_LIKE}))
    tok = HFTokenizer(str(hf_dir))
    chat = build_chat_template("auto", tok)
    assert isinstance(chat, JinjaTemplate)
    assert chat.render(CONV) == ChatMLTemplate().render(CONV)
    assert chat.generation_prompt(CONV[:2]) == ChatMLTemplate().generation_prompt(CONV[:2])
    path = _write(hf_dir.parent / "c.jsonl", [{"messages": CONV}])
    s = build_sft_dataset([path], tok, 128, packed=False)[0]
    runs = _runs(s["loss_mask"])
    # The template writes the eos (<|im_end|>) itself, so no eod is appended.
    assert [s["labels"][a:b].tolist() for a, b in runs] == [tok.tokenize("2+3 = 5.<|im_end|>\n"),
                                                            tok.tokenize("8<|im_end|>\n")]
    assert [tok.detokenize(s["labels"][a:b]) for a, b in runs] == ["2+3 = 5.\n", "8\n"]
    im_start = tok.vocab["<|im_start|>"]
    assert im_start in s["tokens"].tolist() and im_start not in s["labels"][s["loss_mask"].bool()].tolist()


def test_hf_template_errors(tmp_path):
    with pytest.raises(ConfigError, match="template='chatml'"):
        build_chat_template("hf", ByteTokenizer())
    drops_history = "{{ messages[-1]['role'] + ': ' + messages[-1]['content'] }}"
    with pytest.raises(ConfigError, match="rewrites earlier turns"):
        JinjaTemplate(drops_history).segments(CONV)
    with pytest.raises(ConfigError, match="does not parse"):
        JinjaTemplate("{% for %}")
