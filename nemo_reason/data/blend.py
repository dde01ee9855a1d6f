"""Blends: check a configured blend's files where the job runs, and resolve its sources to Megatron path prefixes.

A blend is a list of ``(weight, path)`` entries (:class:`~nemo_reason.config.schema.BlendEntry`),
Megatron-LM's ``--data-path "w1 p1 w2 p2"`` as data. ``path`` is a Megatron indexed dataset prefix
(``<path>.bin`` / ``<path>.idx``) or a named source:

- ``synthetic``: the generated corpus of ``data.num_documents`` documents at ``data.corpus_seed``;
  ``synthetic:SEED``: the same generator at another seed (a second, disjoint-looking corpus);
- ``bundled:NAME[:N[:SEED]][@FILTER,...]``: a corpus bundled with the package, sized, seeded and
  filtered (grammar in :mod:`nemo_reason.data.sources`).

Named sources are built once into the cache (rank 0, the other ranks wait) and are then ordinary
prefixes. The pure rules (weights, duplicates, phase shares) are configuration and live in
:mod:`nemo_reason.config.blends` (re-exported here); :func:`check_sources` is the preflight's part:
the prefixes exist and the named sources are valid, before any work starts. This module imports
no Megatron code (``nemo-reason show`` stays light); :mod:`nemo_reason.data.loader` builds the datasets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence, Tuple

from nemo_reason.config.blends import (  # noqa: F401  (re-exported)
    _SYNTHETIC, NAMED_HINT, check_blend, check_data_blends, check_phase_steps, is_named,
)
from nemo_reason.config.errors import ConfigError


def _check_path(path: str, field: str) -> None:
    if _SYNTHETIC.match(path):
        return
    if path.startswith("bundled:"):
        from nemo_reason.data.sources import SourceError, check_source

        try:
            check_source(path)
        except SourceError as err:
            raise ConfigError(f"{field}: {err}") from None
        return
    p = os.path.expanduser(path)
    missing = [s for s in (".bin", ".idx") if not os.path.isfile(p + s)]
    if missing:
        raise ConfigError(
            f"{field}={path}: {path}{'/'.join(missing)} not found. Give the prefix of a Megatron indexed "
            "dataset (the path without .bin/.idx, as written by `nemo-reason prepare-data` or Megatron-LM's "
            f"tools/preprocess_data.py), or {NAMED_HINT}")


def check_sources(d) -> None:
    """Preflight: every dataset prefix of the run (phases, blend, ``path_prefix``, ``valid_blend``)
    has its .bin and .idx, and every named source is valid; ConfigError naming the field otherwise."""
    if d.phases:
        blends = [(f"data.phases[{i}].blend", p.blend) for i, p in enumerate(d.phases)]
    elif d.blend:
        blends = [("data.blend", d.blend)]
    else:
        blends = []
        if d.source == "indexed" and d.path_prefix:
            _check_path(str(d.path_prefix), "data.path_prefix")
    if d.valid_blend:
        blends.append(("data.valid_blend", d.valid_blend))
    for where, entries in blends:
        for i, e in enumerate(entries):
            _check_path(e.path, f"{where}[{i}].path")


def normalized(entries: Sequence) -> List[Tuple[str, float]]:
    total = float(sum(e.weight for e in entries))
    return [(e.path, e.weight / total) for e in entries]


def resolve_path(path: str, d, tokenizer) -> str:
    """The Megatron path prefix of a blend entry, building a named source into the cache first.
    Call on one rank at a time (the loader builds on rank 0, then the others read)."""
    from nemo_reason.data import indexed

    m = _SYNTHETIC.match(path)
    if m:
        seed = int(m.group(1)) if m.group(1) else d.corpus_seed
        return str(indexed.ensure_synthetic(d.cache_dir, d.num_documents, seed, tokenizer, d.tokenizer))
    if path.startswith("bundled:"):
        from nemo_reason.data.sources import resolve_source

        return resolve_source(path, tokenizer, cache_dir=d.cache_dir)
    p = os.path.expanduser(path)
    if not (Path(p + ".bin").is_file() and Path(p + ".idx").is_file()):
        raise ConfigError(f"{path}: {path}.bin/.idx not found (write them with `nemo-reason prepare-data` or "
                          "Megatron-LM's tools/preprocess_data.py)")
    return p
