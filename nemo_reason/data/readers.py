"""Read documents from JSONL (plain, ``.gz``, ``.zst``) and Parquet files, in chunks, with line numbers.

The reader runs in the one process that feeds the workers, so it does no parsing: JSONL lines
travel as raw bytes (the workers parse them, reporting ``file:line`` for a malformed one), and
Parquet values as the strings the ``pyarrow`` reader gives (row numbers, 1-based, stand in for
line numbers); :func:`text_of` turns one raw item into its text (in the workers, and for
``train-tokenizer``). :func:`check_input` validates a file before any work starts: it exists, its
compression is one we read, and a Parquet file has the text column.

``.txt`` files are read as one document per line (the text itself, no JSON). Left out: JSON
arrays, CSV, Arrow IPC; ``--partitions`` and sentence splitting of Megatron-LM's tool.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator, List, Union

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz", ".jsonl.zst",
                  ".json.zst", ".ndjson.zst", ".jsonl.zstd", ".json.zstd")
TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.zst")
PARQUET_SUFFIXES = (".parquet", ".pq")


class InputError(ValueError):
    """An input file is missing or of a kind we don't read; raised before any work starts."""


class PrepareError(RuntimeError):
    """Bad input data found while preparing (a malformed line without ``skip_bad``)."""


def kind_of(path: str) -> str:
    name = path.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    raise InputError(f"{path}: unknown input type; use .jsonl/.json (optionally .gz or .zst), .parquet or .txt")


def expand_inputs(patterns: List[str]) -> List[str]:
    """Paths in the given order; a glob pattern expands to its sorted matches. Missing files are errors."""
    out: List[str] = []
    for pat in patterns:
        if any(c in pat for c in "*?["):
            hits = sorted(glob.glob(os.path.expanduser(pat)))
            if not hits:
                raise InputError(f"--input {pat}: the pattern matches no file")
            out.extend(hits)
        else:
            p = os.path.expanduser(pat)
            if not os.path.isfile(p):
                raise InputError(f"--input {pat}: file not found")
            out.append(p)
    if len(set(map(os.path.abspath, out))) != len(out):
        raise InputError("--input names a file twice: each input is read once")
    return out


def check_input(path: str, key: str) -> None:
    kind = kind_of(path)
    if path.lower().endswith((".zst", ".zstd")):
        try:
            import zstandard  # noqa: F401
        except ImportError:
            raise InputError(f"{path}: reading .zst needs the zstandard package (pip install zstandard)") from None
    if kind == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise InputError(f"{path}: reading Parquet needs the pyarrow package (pip install pyarrow)") from None
        try:
            names = pq.ParquetFile(path).schema_arrow.names
        except Exception as exc:  # pyarrow raises ArrowInvalid and friends
            raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
        if key not in names:
            raise InputError(f"{path}: no column {key!r} (columns: {', '.join(names)}); choose one with --json-keys")


def open_binary(path: str) -> BinaryIO:
    """The decompressed byte stream of ``path`` (by its suffix)."""
    name = path.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith((".zst", ".zstd")):
        import zstandard

        raw = open(path, "rb")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True), 1 << 20)
    return open(path, "rb", buffering=1 << 20)


@dataclass
class Chunk:
    """Consecutive documents of one file: ``items[i]`` is at line (or row) ``first_line + i``."""

    file_index: int
    kind: str  # "jsonl": raw JSON bytes; "text": raw text bytes; "values": already-decoded values
    first_line: int
    items: List[Union[bytes, str, None]] = field(default_factory=list)
    nbytes: int = 0


def read_chunks(paths: List[str], key: str, max_docs: int = 1024, max_bytes: int = 1 << 20) -> Iterator[Chunk]:
    """Chunks of at most ``max_docs`` documents / about ``max_bytes`` bytes, file by file, in order."""
    for fi, path in enumerate(paths):
        kind = kind_of(path)
        if kind == "parquet":
            yield from _parquet_chunks(fi, path, key, max_docs)
            continue
        chunk = Chunk(fi, kind, 1)
        with open_binary(path) as f:
            for line_no, line in enumerate(f, start=1):
                if not chunk.items:
                    chunk.first_line = line_no
                chunk.items.append(line)
                chunk.nbytes += len(line)
                if len(chunk.items) >= max_docs or chunk.nbytes >= max_bytes:
                    yield chunk
                    chunk = Chunk(fi, kind, line_no + 1)
        if chunk.items:
            yield chunk


def _parquet_chunks(fi: int, path: str, key: str, max_docs: int) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    row = 1
    for batch in pq.ParquetFile(path).iter_batches(batch_size=max_docs, columns=[key]):
        values = batch.column(0).to_pylist()
        nbytes = sum(len(v.encode("utf-8")) for v in values if isinstance(v, str))
        yield Chunk(fi, "values", row, values, nbytes)
        row += len(values)


def input_fingerprint(paths: List[str]) -> List[list]:
    """What identifies the inputs cheaply: absolute path, size and modification time of each."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    return out


def text_of(raw, kind: str, key: str):
    """The document's text (a str, or a list of str), or raise ValueError with the reason."""
    if kind == "values":
        value = raw
    elif kind == "text":
        return raw.decode("utf-8").rstrip("\r\n")
    else:
        try:
            obj = json.loads(raw)
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        if key not in obj:
            have = ", ".join(list(obj)[:8]) or "none"
            raise ValueError(f"no key {key!r} (keys: {have}); choose the field with --json-keys")
        value = obj[key]
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ValueError(f"{key!r} is {'null' if value is None else type(value).__name__}, expected a string")
