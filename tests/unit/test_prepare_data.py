"""prepare-data: Megatron-format output with the tokenizer's exact ids, byte parity with Megatron's own
builder, worker-count independence, bad lines, interruption, idempotence, input formats, dedup/quality."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from nemo_reason.config.schema import ConfigError
from nemo_reason.data.corpora import generate
from nemo_reason.data.dedup import keep_mask
from nemo_reason.data.prepare import PrepareConfig, PrepareError, prepare
from nemo_reason.data.tokenizer import ByteTokenizer, build_tokenizer


def _docs(n=150, seed=0):
    out = []
    for name in ("math", "mcq", "code"):
        out += [r["text"] for r in generate(name, n // 3, seed)]
    return out + ["Unicode: café 東京 🙂", "x"]


def _write(path: Path, docs, key="text"):
    path.write_text("".join(json.dumps({key: d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


def _cfg(tmp_path, inputs, name="out", **kw):
    kw.setdefault("tokenizer", "byte")
    kw.setdefault("progress_every", -1)
    return PrepareConfig(inputs=[str(p) for p in inputs], output_prefix=str(tmp_path / name), **kw)


def _files(prefix):
    return Path(f"{prefix}.bin").read_bytes() + Path(f"{prefix}.idx").read_bytes()


def test_megatron_reads_exact_ids_and_matches_megatron_builder(tmp_path):
    import torch
    from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder

    docs = _docs(60)
    src = _write(tmp_path / "in.jsonl", docs)
    res = prepare(_cfg(tmp_path, [src], tokenizer="bundled", workers=2))  # the default tokenizer
    (prefix,) = res.prefixes
    assert prefix == str(tmp_path / "out_text_document")  # Megatron-LM's naming
    tok = build_tokenizer("bundled")
    ds = IndexedDataset(prefix)
    assert len(ds) == len(docs) and ds.index.dtype == np.uint16
    for i, text in enumerate(docs):
        assert ds[i].tolist() == tok.tokenize(text) + [tok.eod]
    # What Megatron-LM's preprocess_data.py does with the same ids, through Megatron's builder.
    ref = str(tmp_path / "megatron")
    builder = IndexedDatasetBuilder(f"{ref}.bin", dtype=DType.optimal_dtype(tok.vocab_size))
    for text in docs:
        ids = tok.tokenize(text) + [tok.eod]
        builder.add_document(torch.tensor(ids), [len(ids)])
    builder.finalize(f"{ref}.idx")
    assert _files(prefix) == _files(ref)
    stats = json.loads(Path(f"{prefix}.json").read_text())
    assert stats["documents"] == len(docs) and stats["tokens"] == sum(len(ds[i]) for i in range(len(ds)))
    assert stats["unigram_entropy_nats"] > 0


def test_workers_do_not_change_the_output(tmp_path):
    docs = _docs(150) * 2  # exact duplicates for dedup to find
    src = _write(tmp_path / "in.jsonl", docs)
    kw = dict(chunk_docs=16, dedup="exact", quality_buckets="0.6,0.9")
    one = prepare(_cfg(tmp_path, [src], "w1", workers=1, **kw))
    two = prepare(_cfg(tmp_path, [src], "w2", workers=2, **kw))
    assert len(one.prefixes) == 3 and one.stats["duplicates"] == len(docs) // 2
    for a, b in zip(one.prefixes, two.prefixes):
        assert _files(a) == _files(b)
    assert sum(v["documents"] for v in one.stats["outputs"].values()) == len(docs) // 2


def test_bad_line_gives_file_and_line_and_leaves_nothing(tmp_path):
    src = tmp_path / "in.jsonl"
    lines = [json.dumps({"text": d}) for d in _docs(90)]
    lines.insert(70, '{"text": "unterminated')
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PrepareError, match=rf"{src}:71: invalid JSON"):
        prepare(_cfg(out, [src], chunk_docs=8, workers=2))
    assert os.listdir(out) == []  # nothing half-written
    res = prepare(_cfg(out, [src], chunk_docs=8, workers=2, skip_bad=True))
    assert res.stats["skipped_bad"] == 1 and res.stats["documents"] == len(lines) - 1
    assert res.stats["bad_examples"][0].startswith(f"{src}:71:")
    for body, msg in [('{"body": "x"}', "no key 'text' \\(keys: body\\)"), ('{"text": 3}', "'text' is int"),
                      ('["text"]', "expected a JSON object"), ('{"text": null}', "'text' is null")]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"text": "fine"}\n' + body + "\n")
        with pytest.raises(PrepareError, match=rf"bad.jsonl:2: {msg}"):
            prepare(_cfg(tmp_path, [bad], "bad"))


def test_killed_run_never_looks_finished_and_rerun_completes(tmp_path, monkeypatch):
    # A quality scorer that SIGKILLs its own process halfway through: a hard crash mid-write.
    (tmp_path / "killer.py").write_text(textwrap.dedent("""
        import os, signal
        def score(text):
            if os.environ.get("KILL_AT") and text.startswith(os.environ["KILL_AT"]):
                os.kill(os.getpid(), signal.SIGKILL)
            return 1.0
    """))
    docs = _docs(150)
    src = _write(tmp_path / "in.jsonl", docs)
    prefix = tmp_path / "out_text_document"
    env = dict(os.environ, KILL_AT=docs[120][:40], PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [sys.executable, "-m", "nemo_reason.cli", "prepare-data", "--input", str(src), "--output-prefix",
           str(tmp_path / "out"), "--tokenizer", "byte", "--workers", "1", "--quality-scorer", "killer:score",
           "--quality-min", "0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert not Path(f"{prefix}.idx").exists() and not Path(f"{prefix}.json").exists()
    assert list(tmp_path.glob("out_text_document.tmp*.bin"))  # the killed run's partial file
    monkeypatch.syspath_prepend(str(tmp_path))
    res = prepare(_cfg(tmp_path, [src], workers=1, quality_scorer="killer:score", quality_min=0.0))
    assert not res.already_prepared and res.stats["documents"] == len(docs)
    assert not list(tmp_path.glob("out_text_document.tmp*"))  # leftovers of the dead run removed


def test_rerun_is_a_no_op_until_inputs_or_options_change(tmp_path):
    docs = _docs(30)
    src = _write(tmp_path / "in.jsonl", docs)
    first = prepare(_cfg(tmp_path, [src]))
    prefix = first.prefixes[0]
    mtime = os.stat(f"{prefix}.idx").st_mtime_ns
    again = prepare(_cfg(tmp_path, [src], workers=2))  # the worker count is not an option of the output
    assert again.already_prepared and os.stat(f"{prefix}.idx").st_mtime_ns == mtime
    assert prepare(_cfg(tmp_path, [src], append_eod=False)).stats["tokens"] == first.stats["tokens"] - len(docs)
    with open(src, "a") as f:
        f.write(json.dumps({"text": "one more"}) + "\n")
    assert prepare(_cfg(tmp_path, [src])).stats["documents"] == len(docs) + 1
    assert prepare(_cfg(tmp_path, [src], force=True)).already_prepared is False


def test_gzip_zstd_parquet_and_text_inputs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    docs = _docs(45)
    plain = _write(tmp_path / "a.jsonl", docs)
    raw = plain.read_bytes()
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}), tmp_path / "d.parquet", row_group_size=7)
    ref = _files(prepare(_cfg(tmp_path, [plain], "plain")).prefixes[0])
    for name in ("b.jsonl.gz", "c.jsonl.zst", "d.parquet"):
        assert _files(prepare(_cfg(tmp_path, [tmp_path / name], name.split(".")[0])).prefixes[0]) == ref
    both = prepare(_cfg(tmp_path, [tmp_path / "c.jsonl.zst", tmp_path / "d.parquet"], "both"))
    assert both.stats["documents"] == 2 * len(docs)
    assert _files(prepare(_cfg(tmp_path, [tmp_path / "*.jsonl.gz"], "glob")).prefixes[0]) == ref
    with pytest.raises(ConfigError, match="names a file twice"):
        prepare(_cfg(tmp_path, [plain, plain]))
    (tmp_path / "t.txt").write_text("first line\n\nsecond line\n")
    res = prepare(_cfg(tmp_path, [tmp_path / "t.txt"], "txt", megatron_names=False))
    assert res.prefixes == [str(tmp_path / "txt")] and res.stats["documents"] == 2
    with pytest.raises(ConfigError, match="no column 'body'"):
        prepare(_cfg(tmp_path, [tmp_path / "d.parquet"], json_key="body"))
    with pytest.raises(ConfigError, match="unknown input type"):
        prepare(_cfg(tmp_path, [_write(tmp_path / "x.csv", ["a"])]))


def test_sentences_empty_docs_and_options(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": ["Hello ", "world."]}) + "\n" + json.dumps({"text": ""}) + "\n")
    res = prepare(_cfg(tmp_path, [src]))
    tok = ByteTokenizer()
    ds = IndexedDataset(res.prefixes[0])  # keep it: items are views of its memory map
    assert ds[0].tolist() == tok.tokenize("Hello world.") + [tok.eod]
    assert res.stats["empty_documents"] == 1 and res.stats["documents"] == 1
    for bad, msg in [(dict(dedup="fuzzy"), "--dedup"), (dict(quality_buckets="0.5,2"), "strictly between"),
                     (dict(quality_scorer="nope", quality_min=0.5), "not registered"), (dict(workers=-1), "--workers")]:
        with pytest.raises(ConfigError, match=msg):
            prepare(_cfg(tmp_path, [src], **bad))
    with pytest.raises(ConfigError, match="file not found"):
        prepare(_cfg(tmp_path, [tmp_path / "missing.jsonl"]))


def test_dedup_and_quality_filters(tmp_path):
    base = [r["text"] for r in generate("prose", 12, 2)]
    words = max(base, key=len).split()
    near = " ".join(words[:3] + ["changed"] + words[4:])
    junk = "\n".join(["$$$ ### BUY NOW ### $$$"] * 20)
    src = _write(tmp_path / "in.jsonl", base + [base[1], near, junk])
    exact = prepare(_cfg(tmp_path, [src], "e", dedup="exact"))
    assert exact.stats["duplicates"] == 1
    near_res = prepare(_cfg(tmp_path, [src], "n", dedup="minhash"))
    expected = 15 - sum(keep_mask(base + [base[1], near, junk], "minhash"))
    assert near_res.stats["duplicates"] == expected >= 2 and near_res.stats["documents"] == 15 - expected
    assert exact.stats["documents"] == 14
    q = prepare(_cfg(tmp_path, [src], "q", quality_min=0.5))
    assert q.stats["below_quality"] >= 1 and q.stats["documents"] == 15 - q.stats["below_quality"]


def test_cli_exit_codes(tmp_path, capsys):
    from nemo_reason.cli import main

    src = _write(tmp_path / "in.jsonl", _docs(15))
    assert main(["prepare-data", "--input", str(src), "--output-prefix", str(tmp_path / "o"), "--tokenizer", "byte",
                 "--workers", "1", "--dedup", "exact"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "o_text_document")
    assert main(["prepare-data", "--input", str(tmp_path / "nope.jsonl"), "--output-prefix", str(tmp_path / "o")]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["prepare-data", "--input", str(src), "--output-prefix", str(tmp_path / "o"),
                 "--json-keys", "a", "b"]) == 2
    (tmp_path / "bad.jsonl").write_text("{}\n")
    assert main(["prepare-data", "--input", str(tmp_path / "bad.jsonl"), "--output-prefix", str(tmp_path / "b"),
                 "--tokenizer", "byte"]) == 1
    assert "bad.jsonl:1: no key 'text'" in capsys.readouterr().err
