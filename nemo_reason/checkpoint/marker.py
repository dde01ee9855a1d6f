"""What makes a folder a complete checkpoint: the marker, its manifest of sizes and checksums, verification.

A checkpoint folder ``iter_NNNNNNN`` is complete when it holds the marker ``complete.json``, written
last, just before the atomic rename that publishes the folder (:mod:`nemo_reason.checkpoint.io`).
The marker lists every file written into the checkpoint with its size and CRC-32::

    {"step": 100, "format": 2, "checksum": "crc32", "total_bytes": 123456,
     "files": {"__0_0.distcp": [81920, 2864434397], "meta.json": [911, 1404093419], ...}}

so a later reader can tell a checkpoint that was damaged after it was published (a truncated or
overwritten file, a file lost in a copy) from a good one. CRC-32 (zlib) catches truncation and
corruption at disk speed; it is not a defence against deliberate tampering. Markers written before
the manifest existed (``{"step": N}``) are accepted unverified.

Pure Python (no torch): ``nemo-reason show-checkpoint`` and discovery use it without loading Megatron.
Set-aside and the multi-rank agreement on which checkpoint to resume live in ``io.py``.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

MARKER = "complete.json"
MARKER_FORMAT = 2
# Per-rank partial manifests, merged into the marker by rank 0 and removed before publish.
PARTIAL_DIR = ".manifest"
_ITER_RE = re.compile(r"^iter_(\d{7,})$")
_BLOCK = 4 << 20


def iter_dir_name(step: int) -> str:
    return f"iter_{step:07d}"


def iter_step(path: str | os.PathLike) -> Optional[int]:
    """The step of an ``iter_*`` folder name, or None."""
    m = _ITER_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def is_complete(path: str | os.PathLike) -> bool:
    return (Path(path) / MARKER).is_file()


def list_complete(ckpt_root: str | os.PathLike) -> List[Path]:
    """The complete ``iter_*`` folders of ``ckpt_root``, oldest first (marker present; not verified)."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        step = iter_step(p)
        if step is not None and p.is_dir() and (p / MARKER).is_file():
            found.append((step, p))
    return [p for _, p in sorted(found)]


def file_crc32(path: str | os.PathLike) -> int:
    crc = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            block = f.read(_BLOCK)
            if not block:
                return crc
            crc = zlib.crc32(block, crc)


def checkpoint_files(ckpt_dir: str | os.PathLike) -> List[str]:
    """Every file under ``ckpt_dir`` (relative, sorted) that the manifest covers: all but the marker
    and the partial manifests."""
    ckpt_dir = Path(ckpt_dir)
    out = []
    for dirpath, dirnames, filenames in os.walk(ckpt_dir):
        dirnames[:] = [d for d in dirnames if d != PARTIAL_DIR]
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), ckpt_dir)
            if rel != MARKER:
                out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def manifest(ckpt_dir: str | os.PathLike, files: Iterable[str]) -> Dict[str, List[int]]:
    """``{relative path: [size, crc32]}`` of ``files`` (relative to ``ckpt_dir``)."""
    ckpt_dir = Path(ckpt_dir)
    return {rel: [(ckpt_dir / rel).stat().st_size, file_crc32(ckpt_dir / rel)] for rel in files}


def write_partial_manifest(ckpt_dir: str | os.PathLike, rank: int) -> None:
    """Checksum the files this rank wrote (Megatron's ``__<rank>_*.distcp`` and its RNG file), so the
    read-back is spread over the ranks instead of all on rank 0."""
    ckpt_dir = Path(ckpt_dir)
    mine = [rel for rel in checkpoint_files(ckpt_dir)
            if rel.startswith(f"__{rank}_") or rel == f"rng/rank_{rank:05d}.pt"]
    part = ckpt_dir / PARTIAL_DIR
    part.mkdir(exist_ok=True)
    (part / f"rank_{rank:05d}.json").write_text(json.dumps(manifest(ckpt_dir, mine)))


def write_marker(ckpt_dir: str | os.PathLike, step: int) -> dict:
    """Merge the ranks' partial manifests, checksum every file they did not cover, remove the
    partials and write the marker (the last file written before publish). Returns the marker."""
    ckpt_dir = Path(ckpt_dir)
    files: Dict[str, List[int]] = {}
    part = ckpt_dir / PARTIAL_DIR
    if part.is_dir():
        for p in sorted(part.glob("rank_*.json")):
            files.update(json.loads(p.read_text()))
    rest = [rel for rel in checkpoint_files(ckpt_dir) if rel not in files]
    files.update(manifest(ckpt_dir, rest))
    if part.is_dir():
        for p in part.iterdir():
            p.unlink()
        part.rmdir()
    marker = {"step": step, "format": MARKER_FORMAT, "checksum": "crc32",
              "total_bytes": sum(size for size, _ in files.values()), "files": dict(sorted(files.items()))}
    tmp = ckpt_dir / f".{MARKER}.tmp"
    # One line per file, so `cat complete.json` reads as a listing.
    head = json.dumps({k: v for k, v in marker.items() if k != "files"})[:-1]
    body = ",\n".join(f" {json.dumps(rel)}: {json.dumps(v)}" for rel, v in marker["files"].items())
    tmp.write_text(f'{head}, "files": {{\n{body}\n}}}}\n')
    os.replace(tmp, ckpt_dir / MARKER)
    return marker


def read_marker(ckpt_dir: str | os.PathLike) -> dict:
    """The marker's content; ValueError when it is missing or unreadable."""
    path = Path(ckpt_dir) / MARKER
    try:
        marker = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"no {MARKER} (a save that never finished)") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{MARKER} is unreadable ({exc})") from None
    if not isinstance(marker, dict):
        raise ValueError(f"{MARKER} is not a JSON object")
    return marker


def verify(ckpt_dir: str | os.PathLike, checksums: bool = True) -> Tuple[Optional[bool], List[str]]:
    """Check a checkpoint against its marker: ``(True, [])`` when every listed file has its size (and,
    with ``checksums``, its CRC-32); ``(False, problems)`` naming each file that does not;
    ``(None, [])`` for a marker written before manifests (nothing to check against)."""
    ckpt_dir = Path(ckpt_dir)
    try:
        marker = read_marker(ckpt_dir)
    except ValueError as exc:
        return False, [str(exc)]
    files = marker.get("files")
    if files is None:
        return None, []
    problems = []
    try:
        listed = [(rel, int(size), int(crc)) for rel, (size, crc) in files.items()]
    except (AttributeError, TypeError, ValueError):
        return False, [f"{MARKER} lists its files in an unknown form"]
    for rel, size, crc in listed:
        path = ckpt_dir / rel
        try:
            got = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{rel} is missing")
            continue
        if got != size:
            problems.append(f"{rel} has {got:,} bytes, {size:,} were written")
        elif checksums and file_crc32(path) != crc:
            problems.append(f"{rel} fails its checksum (crc32)")
    return not problems, problems


def describe_problems(ckpt_dir: str | os.PathLike, problems: List[str], limit: int = 3) -> str:
    shown = "; ".join(problems[:limit]) + (f"; and {len(problems) - limit} more" if len(problems) > limit else "")
    return f"{Path(ckpt_dir).name}: {shown}"


def human_bytes(n: Optional[int]) -> str:
    if n is None:
        return "size unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
