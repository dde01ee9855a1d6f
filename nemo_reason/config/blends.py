"""The data group's pure rules: blends (weights, duplicates) and phases (shares, step boundaries).

``DataConfig.validate`` and ``RunConfig.validate`` call these; they read no file. Whether a blend's
prefixes exist and its named sources are valid is the preflight's business
(:mod:`nemo_reason.preflight`, via :mod:`nemo_reason.data.blend`), on the machine where the job runs.

The phase boundary rule (documented in :mod:`nemo_reason.data.phases`, which re-exports
:func:`phase_boundaries`) is here because validation checks that every phase gets a step.
"""

from __future__ import annotations

import os
import re
from fractions import Fraction
from typing import List, Optional, Sequence

from nemo_reason.config.errors import ConfigError

_SYNTHETIC = re.compile(r"^synthetic(?::(\d+))?$")
NAMED_HINT = "a named source (synthetic, synthetic:SEED, bundled:NAME)"


class PhaseError(ValueError):
    """The phase shares do not make a valid schedule; the message names the numbers and the fix."""


def _exact(x: float) -> Fraction:
    # Shares are written as decimals (0.6, 0.35): take them as the decimal the user wrote, so that
    # 0.6 x 200 is exactly 120 and not 120.00000000000001.
    return Fraction(repr(float(x)))


def phase_boundaries(shares: Sequence[float], max_steps: int, names: Optional[Sequence[str]] = None) -> List[int]:
    """Step boundaries ``[0, b1, ..., max_steps]`` for phases with these token shares (see module doc)."""
    names = list(names) if names else [f"phase{i + 1}" for i in range(len(shares))]
    if not shares:
        raise PhaseError("no phases")
    total = sum((_exact(s) for s in shares), Fraction(0))
    if any(s <= 0 for s in shares) or abs(total - 1) > Fraction(1, 10**6):
        listed = " + ".join(f"{n} {s:g}" for n, s in zip(names, shares))
        raise PhaseError(f"data.phases shares must be positive and sum to 1; they sum to {float(total):g} "
                         f"({listed}): adjust the shares")
    bounds, cum = [0], Fraction(0)
    for s in shares[:-1]:
        cum += _exact(s) / total
        bounds.append(int(cum * max_steps + Fraction(1, 2)))  # round half up
    bounds.append(max_steps)
    for i in range(len(shares)):
        if bounds[i + 1] <= bounds[i]:
            raise PhaseError(
                f"data.phases: phase '{names[i]}' (share {shares[i]:g}) gets no step of trainer.max_steps="
                f"{max_steps} (boundaries at steps {bounds}): raise its share or trainer.max_steps")
    return bounds


def is_named(path: str) -> bool:
    """A named source (``synthetic``, ``synthetic:SEED``, ``bundled:...``) rather than a prefix."""
    return bool(_SYNTHETIC.match(path)) or path.startswith("bundled:")


def check_blend(entries: Sequence, where: str) -> None:
    if not entries:
        raise ConfigError(f"{where} is empty: list at least one {{weight: W, path: PREFIX}}")
    seen = set()
    for i, e in enumerate(entries):
        w = f"{where}[{i}]"
        if not e.weight > 0:
            raise ConfigError(f"{w}.weight={e.weight}: weights must be > 0 (drop the entry to leave it out)")
        if not e.path:
            raise ConfigError(f"{w}.path is empty: give a dataset prefix (without .bin/.idx) or {NAMED_HINT}")
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
