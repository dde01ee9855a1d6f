"""The data subcommands of ``nemo-reason``: ``prepare-data`` and ``train-tokenizer``.

    nemo-reason prepare-data --input FILE [FILE ...] --output-prefix PREFIX [--tokenizer NAME|PATH]
                             [--json-keys text] [--workers N] [--skip-bad] [--dedup exact|minhash]
                             [--quality-min X] [--quality-buckets 0.3,0.6] [--force]
    nemo-reason train-tokenizer --input FILE [FILE ...] --output DIR [--vocab-size 32000]

Flag names follow Megatron-LM's ``tools/preprocess_data.py`` where the two overlap (``--input``,
``--output-prefix``, ``--json-keys``, ``--workers``, ``--append-eod``, ``--tokenizer-model``);
its sentence splitting and ``--partitions`` are not offered (``--input`` takes many files
instead). Configuration problems exit 2 before any work; a malformed input line exits 1 with
``file:line``.
"""

from __future__ import annotations

import argparse
import signal
import sys

from nemo_reason.config.schema import ConfigError

EXIT_BAD_DATA = 1
# Megatron-LM's --tokenizer-type names for the kinds we load (its others need its own code).
MEGATRON_TOKENIZER_TYPES = {"HuggingFaceTokenizer": "hf", "SentencePieceTokenizer": "sentencepiece",
                            "GPTSentencePieceTokenizer": "sentencepiece", "ByteLevelTokenizer": "byte"}


def _sigterm_to_interrupt(signum, frame):
    raise KeyboardInterrupt  # runs the cleanup that removes half-written files


def _tokenizer_choice(ns):
    from nemo_reason.data.tokenizer import TokenizerError, parse_tokenizer_arg

    if ns.tokenizer_type:
        return MEGATRON_TOKENIZER_TYPES.get(ns.tokenizer_type, ns.tokenizer_type), ns.tokenizer
    try:
        return parse_tokenizer_arg(ns.tokenizer or "bundled")
    except TokenizerError as exc:
        raise ConfigError(str(exc)) from None


def cmd_prepare_data(ns) -> int:
    from nemo_reason.data.prepare import PrepareConfig, PrepareError, prepare

    if len(ns.json_keys) != 1:
        raise ConfigError(f"--json-keys {' '.join(ns.json_keys)}: prepare one field per run "
                          "(each run writes <prefix>_<key>_document)")
    name, path = _tokenizer_choice(ns)
    cfg = PrepareConfig(inputs=ns.input, output_prefix=ns.output_prefix, tokenizer=name, tokenizer_path=path,
                        json_key=ns.json_keys[0], workers=ns.workers, skip_bad=ns.skip_bad,
                        append_eod=ns.append_eod, dedup=ns.dedup, minhash_threshold=ns.minhash_threshold,
                        minhash_ngram=ns.minhash_ngram, minhash_perms=ns.minhash_perms,
                        quality_scorer=ns.quality_scorer, quality_min=ns.quality_min,
                        quality_buckets=ns.quality_buckets or "", megatron_names=not ns.exact_output_prefix,
                        force=ns.force, progress_every=ns.progress_every, cache_dir=ns.cache_dir)
    previous = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    try:
        result = prepare(cfg)
    except PrepareError as exc:
        print(f"nemo-reason: error: {exc}", file=sys.stderr)
        return EXIT_BAD_DATA
    finally:
        signal.signal(signal.SIGTERM, previous)
    for p in result.prefixes:
        print(p)
    return 0


def cmd_train_tokenizer(ns) -> int:
    from nemo_reason.data.bpe import texts_from_files, train_bpe
    from nemo_reason.data.prepare import PrepareError
    from nemo_reason.data.readers import InputError, check_input, expand_inputs

    if ns.vocab_size < 258:
        raise ConfigError(f"--vocab-size {ns.vocab_size}: a byte-level BPE needs at least 258 (256 bytes + 2 special)")
    if len(ns.special_tokens) < 1:
        raise ConfigError("--special-tokens needs at least the end-of-document token")
    try:
        paths = expand_inputs(ns.input)
        for p in paths:
            check_input(p, ns.json_keys[0])
    except InputError as exc:
        raise ConfigError(str(exc)) from None
    try:
        texts = texts_from_files(paths, ns.json_keys[0], skip_bad=ns.skip_bad, max_documents=ns.max_documents)
        out = train_bpe(texts, ns.vocab_size, ns.output, min_frequency=ns.min_frequency,
                        special_tokens=ns.special_tokens)
    except PrepareError as exc:
        print(f"nemo-reason: error: {exc}", file=sys.stderr)
        return EXIT_BAD_DATA
    print(f"[train-tokenizer] wrote {out} ({ns.vocab_size} tokens); use it with "
          f"`prepare-data --tokenizer {ns.output}` and data.tokenizer=hf data.tokenizer_path={ns.output}",
          file=sys.stderr)
    print(out.parent)
    return 0


def add_data_commands(sub) -> None:
    """Register ``prepare-data`` and ``train-tokenizer`` on the CLI's subparsers."""
    p = sub.add_parser("prepare-data", help="JSONL/Parquet -> Megatron .bin/.idx (tokenize, dedup, quality)",
                       description="Tokenize documents into a Megatron indexed dataset, the format of Megatron-LM's "
                                   "tools/preprocess_data.py: <prefix>_<key>_document.bin/.idx. Re-running with the "
                                   "same inputs and options does nothing.")
    p.add_argument("--input", nargs="+", required=True, metavar="FILE",
                   help="JSONL (.jsonl/.json, optionally .gz or .zst), Parquet or .txt files; globs allowed")
    p.add_argument("--output-prefix", required=True, metavar="PREFIX", help="writes PREFIX_<key>_document.bin/.idx")
    p.add_argument("--tokenizer", "--tokenizer-model", default=None, metavar="NAME|PATH",
                   help="a registered tokenizer (bundled, byte) or a path: tokenizer.json, a folder holding one, "
                        "or a SentencePiece .model (default: bundled)")
    p.add_argument("--tokenizer-type", choices=["byte", "bundled", "hf", "sentencepiece", *MEGATRON_TOKENIZER_TYPES],
                   default=None, metavar="TYPE",
                   help="say the tokenizer kind instead of inferring it from --tokenizer: byte, bundled, hf, "
                        "sentencepiece, or Megatron-LM's HuggingFaceTokenizer / SentencePieceTokenizer")
    p.add_argument("--json-keys", "--json-key", nargs="+", default=["text"], metavar="KEY",
                   help="the field (Parquet column) holding the text (default: text)")
    p.add_argument("--workers", type=int, default=0, help="worker processes (default: one per CPU core)")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed lines and count them instead of stopping")
    p.add_argument("--append-eod", action=argparse.BooleanOptionalAction, default=True,
                   help="end every document with the tokenizer's EOD token (default: yes)")
    p.add_argument("--dedup", choices=["none", "exact", "minhash"], default="none",
                   help="drop exact duplicates (normalized text) or near-duplicates (MinHash LSH)")
    p.add_argument("--minhash-threshold", type=float, default=0.7, help="Jaccard similarity of a near-duplicate")
    p.add_argument("--minhash-ngram", type=int, default=5, help="words per shingle")
    p.add_argument("--minhash-perms", type=int, default=128, help="MinHash permutations")
    p.add_argument("--quality-scorer", default="heuristic", metavar="NAME|MODULE:ATTR",
                   help="registered scorer or importable callable (default: heuristic)")
    p.add_argument("--quality-min", type=float, default=None, metavar="X", help="drop documents scoring below X")
    p.add_argument("--quality-buckets", default=None, metavar="CUTS",
                   help="e.g. 0.3,0.6: one output per score bucket, PREFIX_<key>_document_quality<lo>-<hi>")
    p.add_argument("--exact-output-prefix", action="store_true",
                   help="write PREFIX.bin/.idx, without Megatron's _<key>_document suffix")
    p.add_argument("--force", action="store_true", help="redo even if the output is already prepared")
    p.add_argument("--progress-every", type=float, default=0.0, metavar="SECONDS",
                   help="seconds between progress lines (default: 1 on a terminal, 10 otherwise; <0: quiet)")
    p.add_argument("--cache-dir", default="", help="cache for the bundled tokenizer (default: $NEMO_REASON_CACHE)")
    p.set_defaults(fn=cmd_prepare_data)

    p = sub.add_parser("train-tokenizer", help="train a byte-level BPE tokenizer on local text",
                       description="Train a byte-level BPE with the Hugging Face tokenizers library and write "
                                   "DIR/tokenizer.json (+ tokenizer_config.json), usable as --tokenizer DIR and "
                                   "data.tokenizer=hf data.tokenizer_path=DIR.")
    p.add_argument("--input", nargs="+", required=True, metavar="FILE", help="same formats as prepare-data")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--json-keys", "--json-key", nargs=1, default=["text"], metavar="KEY")
    p.add_argument("--special-tokens", nargs="+", default=["<eod>", "<pad>"],
                   help="the first ends documents, the second pads (default: <eod> <pad>)")
    p.add_argument("--max-documents", type=int, default=None, help="train on the first N documents only")
    p.add_argument("--skip-bad", action="store_true")
    p.set_defaults(fn=cmd_train_tokenizer)
