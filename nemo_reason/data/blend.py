"""Blends: check a configured blend (before any work) and resolve its sources to Megatron path prefixes.

A blend is a list of ``(weight, path)`` entries (:class:`~nemo_reason.config.schema.BlendEntry`),
Megatron-LM's ``--data-path "w1 p1 w2 p2"`` as data. ``path`` is a Megatron indexed dataset prefix
(``<path>.bin`` / ``<path>.idx``) or a named source:

- ``synthetic``: the generated corpus of ``data.num_documents`` documents at ``data.corpus_seed``;
  ``synthetic:SEED``: the same generator at another seed (a second, disjoint-looking corpus);
- ``bundled:NAME[:N[:SEED]][@FILTER,...]``: a corpus bundled with the package, sized, seeded and
  filtered (grammar in :mod:`nemo_reason.data.sources`).

Named sources are built once into the cache (rank 0, the other ranks wait) and are then ordinary
prefixes. :func:`check_data_blends` runs in ``DataConfig.validate()`` so a missing file or a typo
fails before any work starts. This module imports no Megatron code (``nemo-reason show`` stays
light); :mod:`nemo_reason.data.loader` builds the datasets.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Sequence, Tuple

from nemo_reason.config.schema import ConfigError
from nemo_reason.data.phases import PhaseError, phase_boundaries

_SYNTHETIC = re.compile(r"^synthetic(?::(\d+))?$")
NAMED_HINT = "a named source (synthetic, synthetic:SEED, bundled:NAME)"


def is_named(path: str) -> bool:
    return bool(_SYNTHETIC.match(path)) or path.startswith("bundled:")


def _check_path(path: str, where: str) -> None:
    if not path:
        raise ConfigError(f"{where}.path is empty: give a dataset prefix (without .bin/.idx) or {NAMED_HINT}")
    m = _SYNTHETIC.match(path)
    if m:
        return
    if path.startswith("bundled:"):
        from nemo_reason.data.sources import SourceError, check_source

        try:
            check_source(path)
        except SourceError as err:
            raise ConfigError(f"{where}.path: {err}") from None
        return
    p = os.path.expanduser(path)
    missing = [s for s in (".bin", ".idx") if not os.path.isfile(p + s)]
    if missing:
        raise ConfigError(
            f"{where}.path={path}: {path}{'/'.join(missing)} not found. Give the prefix of a Megatron indexed "
            "dataset (the path without .bin/.idx, as written by `nemo-reason prepare-data` or Megatron-LM's "
            f"tools/preprocess_data.py), or {NAMED_HINT}")


def check_blend(entries: Sequence, where: str) -> None:
    if not entries:
        raise ConfigError(f"{where} is empty: list at least one {{weight: W, path: PREFIX}}")
    seen = set()
    for i, e in enumerate(entries):
        w = f"{where}[{i}]"
        if not e.weight > 0:
            raise ConfigError(f"{w}.weight={e.weight}: weights must be > 0 (drop the entry to leave it out)")
        _check_path(e.path, w)
        key = e.path if is_named(e.path) else os.path.abspath(os.path.expanduser(e.path))
        if key in seen:
            raise ConfigError(f"{w}.path={e.path} is listed twice in {where}: merge the two entries' weights")
        seen.add(key)


def check_data_blends(d) -> None:
    """The data group's blend rules (``DataConfig.validate``); the per-step boundary check needs
    ``trainer.max_steps`` and runs in ``RunConfig.validate``."""
    if d.blend and d.phases:
        raise ConfigError("data.blend and data.phases are both set: a phased run gives each phase its blend "
                          "(data.phases[i].blend); drop one of them (e.g. data.blend=[])")
    if d.blend:
        check_blend(d.blend, "data.blend")
    if d.valid_blend:
        check_blend(d.valid_blend, "data.valid_blend")
    names = []
    for i, p in enumerate(d.phases):
        check_blend(p.blend, f"data.phases[{i}].blend")
        names.append(p.name or f"phase{i + 1}")
    if len(set(names)) != len(names):
        raise ConfigError(f"data.phases names repeat ({', '.join(names)}): give each phase its own name")
    if d.phases:
        try:
            # Shares only; the steps each phase gets are checked against trainer.max_steps later.
            phase_boundaries([p.share for p in d.phases], 10**9, names)
        except PhaseError as err:
            raise ConfigError(str(err)) from None


def check_phase_steps(d, max_steps: int) -> None:
    """Every phase gets at least one optimizer step (``RunConfig.validate``)."""
    if d.phases:
        try:
            phase_boundaries([p.share for p in d.phases], max_steps, [p.name for p in d.train_phases()])
        except PhaseError as err:
            raise ConfigError(str(err)) from None


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
