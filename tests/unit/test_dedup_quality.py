"""Dedup (exact, MinHash LSH), the quality scorers, and named sources built from the bundled corpora."""

from __future__ import annotations

import numpy as np
import pytest

from nemo_reason.data import dedup, quality
from nemo_reason.data.sources import SourceError, parse_source

PARAGRAPH = (
    "The river rises in the northern hills and flows for more than two hundred miles before it reaches "
    "the sea. Along its banks there are small towns that have depended on it for trade and travel since "
    "the middle ages. In the spring the water runs high with melted snow, and the farmers who live near "
    "the lower valley have learned to build their houses on raised ground. Fishing was once the main work "
    "of the people in the delta, but today most of them work in the port or in the factories that were "
    "built with the new railway. The old stone bridge at the centre of the largest town is still used "
    "every day, although a wider bridge for heavy traffic was opened a few miles downstream in the last "
    "century. Visitors come in the summer to walk the path that follows the water from the source to the mouth."
)
OTHER = (
    "Bees collect nectar from flowers and turn it into honey inside the hive, where thousands of workers "
    "share the labour of feeding the young, cleaning the cells and guarding the entrance against wasps and "
    "other insects that try to steal the stores. A healthy colony can gather many kilograms of honey in a "
    "good season, and beekeepers take only what the bees can spare before the winter comes."
)


def _edit(text: str, positions, word="zebra") -> str:
    words = text.split()
    for p in positions:
        words[p] = word
    return " ".join(words)


def test_minhash_finds_near_duplicate_not_unrelated():
    near = _edit(PARAGRAPH, [10, 70, 140])  # 3 of 152 words changed
    s = [dedup.minhash_signature(t) for t in (PARAGRAPH, near, OTHER)]
    assert dedup.estimated_jaccard(s[0], s[1]) > 0.75
    assert dedup.estimated_jaccard(s[0], s[2]) < 0.1
    assert dedup.keep_mask([PARAGRAPH, OTHER, near], "minhash") == [True, True, False]
    # A rewrite that changes many words is no longer a near-duplicate.
    far = _edit(PARAGRAPH, range(0, 150, 3))
    assert dedup.keep_mask([PARAGRAPH, far], "minhash") == [True, True]


def test_minhash_estimates_jaccard():
    a, b = PARAGRAPH, _edit(PARAGRAPH, [20, 60, 100, 150])
    ha, hb = set(dedup.shingle_hashes(a).tolist()), set(dedup.shingle_hashes(b).tolist())
    true_j = len(ha & hb) / len(ha | hb)
    est = dedup.estimated_jaccard(dedup.minhash_signature(a, num_perm=256), dedup.minhash_signature(b, num_perm=256))
    assert abs(est - true_j) < 0.1
    sig = dedup.minhash_signature(a)
    assert sig.dtype == np.uint32 and sig.shape == (128,)
    assert np.array_equal(sig, dedup.minhash_signature(a))


def test_exact_dedup_normalizes_case_and_whitespace():
    docs = ["Hello   World\n", "hello world", "hello world!", "Hello World"]
    assert dedup.keep_mask(docs, "exact") == [True, False, True, False]
    with pytest.raises(ValueError, match="exact or minhash"):
        dedup.keep_mask(docs, "fuzzy")


def test_heuristic_quality_orders_documents():
    junk = "\n".join(["### $$$ click here ### ..."] * 30)
    list_like = "\n".join(f"- item {i}" for i in range(40))
    good = quality.heuristic_score(PARAGRAPH)
    assert good > 0.9
    assert quality.heuristic_score(junk) < 0.4
    assert quality.heuristic_score(list_like) < good
    assert quality.heuristic_score("") == 0.0
    rules = quality.heuristic_rules(junk)
    assert rules["dup_lines"] == 0.0 and rules["stopwords"] == 0.0
    assert 0.0 <= quality.heuristic_score(OTHER) <= 1.0


def test_scorers_are_pluggable_and_buckets_checked():
    assert quality.build_scorer("heuristic")(PARAGRAPH) == quality.heuristic_score(PARAGRAPH)
    assert quality.build_scorer("length")("a " * 100) == 0.5
    assert quality.build_scorer("nemo_reason.data.quality:heuristic_score")(OTHER) == quality.heuristic_score(OTHER)
    with pytest.raises(KeyError, match="heuristic"):
        quality.build_scorer("heuristik")
    with pytest.raises(ValueError, match="registered twice"):
        quality.QUALITY_SCORERS.register("heuristic")(lambda: None)
    edges = quality.bucket_edges("0.6,0.3")
    assert edges == [0.0, 0.3, 0.6, 1.0]
    assert [quality.bucket_of(s, edges) for s in (0.0, 0.29, 0.3, 0.99, 1.0)] == [0, 0, 1, 2, 2]
    for bad in ("", "1.5", "0.3,0.3", "x"):
        with pytest.raises(ValueError):
            quality.bucket_edges(bad)


def test_source_grammar():
    s = parse_source("bundled:math:200:7@difficulty>=4,template=linear")
    assert (s.corpus, s.num, s.seed) == ("math", 200, 7)
    assert s.filters == (("difficulty", ">=", 4.0), ("template", "=", "linear"))
    assert parse_source("bundled:prose@quality<0.5").filters == (("quality", "<", 0.5),)
    assert s.keep({"difficulty": 4, "template": "linear"}, None)
    assert not s.keep({"difficulty": 3, "template": "linear"}, None)
    assert not s.keep({"template": "linear"}, None)
    for bad, msg in [("bundled:nope", "no bundled corpus"), ("bundled:math:ten", "integers"),
                     ("bundled:math@difficulty~3", "FIELD OP VALUE"), ("bundled:math@subject>abc", "not a number"),
                     ("bundled:math@", "nothing after"), ("math", "not a named source")]:
        with pytest.raises(SourceError, match=msg):
            parse_source(bad)


def test_resolve_source_builds_filtered_datasets_once(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from nemo_reason.data.corpora import generate
    from nemo_reason.data.sources import resolve_source
    from nemo_reason.data.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    cache = str(tmp_path)
    hard = resolve_source("bundled:math:300:3@difficulty>=4", tok, cache_dir=cache)
    want = [r["text"] for r in generate("math", 300, 3) if r["difficulty"] >= 4]
    ds = IndexedDataset(hard)
    assert len(ds) == len(want) > 0
    assert ds[0].tolist() == tok.tokenize(want[0]) + [tok.eod]
    assert resolve_source("bundled:math:300:3@difficulty>=4", tok, cache_dir=cache) == hard
    hi = resolve_source("bundled:mcq:200@quality>=0.7", tok, cache_dir=cache)
    lo = resolve_source("bundled:mcq:200@quality<0.7", tok, cache_dir=cache)
    assert len(IndexedDataset(hi)) + len(IndexedDataset(lo)) == 200
    with pytest.raises(SourceError, match="leave no document"):
        resolve_source("bundled:math:20@difficulty>5", tok, cache_dir=cache)
    assert not list(tmp_path.rglob("*.tmp*"))
