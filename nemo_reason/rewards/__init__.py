"""Verifiers: plain functions ``score_<domain>(sample: dict, completion: str) -> float`` in [0, 1],
registered by name in :data:`REWARDS`.

Each domain is one module (``math``, ``mcq``, ``exact``, ``format``, ``code``); a module registers its
verifier with :func:`register_reward`, which also records the sample fields the verifier reads
(``fields``, e.g. ``("answer",)``) so that :mod:`nemo_reason.rewards.batch` can reject a sample without
them, naming its position, before scoring anything. The builtin modules are imported on first use
(:func:`load_builtin_rewards`), so ``import nemo_reason.rewards`` costs nothing and the modules' own
dependencies (math-verify, the code sandbox) load only when asked for.

Users bring their own verifier as an import path ``module:function`` (:func:`get_reward`); it may set
a ``fields`` attribute the same way. Left out: scoring many completions in parallel, with per-sample
crash and time isolation, is :mod:`nemo_reason.rewards.batch`'s job.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from typing import Callable, Iterable, Optional, Sequence, Tuple

from nemo_reason.config.errors import ConfigError
from nemo_reason.registry import LazyRegistry, Registry

Verifier = Callable[[dict, str], float]


REWARDS: Registry = LazyRegistry("reward", lambda: load_builtin_rewards())

_BUILTIN = ("nemo_reason.rewards.math", "nemo_reason.rewards.mcq", "nemo_reason.rewards.exact",
            "nemo_reason.rewards.format", "nemo_reason.rewards.code")
_loaded = False


class MissingFieldError(ConfigError):
    """A sample lacks a field its verifier reads; the message names the sample and the field."""


def register_reward(name: str, doc: str = "", fields: Sequence[str] = ()):
    """Register ``fn(sample, completion) -> float`` as reward ``name``; ``fields`` are the sample keys it
    reads (set as ``fn.fields`` unless the function already has one)."""

    def deco(fn):
        if not hasattr(fn, "fields"):
            fn.fields = tuple(fields)
        REWARDS.register(name, doc)(fn)
        return fn

    return deco


def load_builtin_rewards() -> Registry:
    """Import the builtin verifier modules (once); a module that is not in this checkout is skipped."""
    global _loaded
    if not _loaded:
        _loaded = True  # first, so that a module looking a reward up while importing does not recurse
        for mod in _BUILTIN:
            if importlib.util.find_spec(mod) is not None:
                importlib.import_module(mod)
    return REWARDS


def reward_names() -> Tuple[str, ...]:
    return tuple(REWARDS.names())


def get_reward(name_or_path) -> Verifier:
    """The verifier registered as ``name_or_path``, or the function at import path ``module:function``
    (``module:Class.method`` too); a callable is returned as it is. Raises :class:`ConfigError` naming
    the closest registered names (the CLI exits 2 on it)."""
    if callable(name_or_path):
        return name_or_path
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ConfigError(f"reward must be a registered name or 'module:function', got {name_or_path!r}")
    spec = name_or_path.strip()
    if ":" in spec:
        return _import_verifier(spec)
    names = reward_names()
    if spec not in names:
        hints = difflib.get_close_matches(spec, names, n=3, cutoff=0.4)
        raise ConfigError(
            f"unknown reward '{spec}'" + (f"; did you mean: {', '.join(hints)}?" if hints else "")
            + f" (registered: {', '.join(names)}; a custom verifier is given as 'module:function')")
    return REWARDS.get(spec)


def _import_verifier(spec: str) -> Verifier:
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise ConfigError(f"reward '{spec}': a custom verifier is written 'package.module:function'")
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ConfigError(f"reward '{spec}': cannot import module '{mod_name}' ({exc}); check the path and "
                          f"that the module is on PYTHONPATH") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(obj) if not n.startswith("_")]
            hints = difflib.get_close_matches(part, public, n=3, cutoff=0.5)
            raise ConfigError(f"reward '{spec}': '{mod_name}' has no attribute '{attr}'"
                              + (f"; did you mean: {', '.join(hints)}?" if hints else ""))
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"reward '{spec}' is a {type(obj).__name__}, not a function (sample, completion) -> float")
    return obj


def reward_label(reward) -> str:
    """How errors name a reward: its registered name, its path, or the function's qualified name."""
    if isinstance(reward, str):
        return reward
    return f"{getattr(reward, '__module__', '?')}:{getattr(reward, '__qualname__', repr(reward))}"


def fields_of(fn) -> Tuple[str, ...]:
    """The sample fields verifier ``fn`` declares (``fn.fields``; none if it declares nothing)."""
    fields = getattr(fn, "fields", ())
    if isinstance(fields, str):
        fields = (fields,)
    return tuple(fields)


def check_fields(fn, samples: Iterable[dict], label: Optional[str] = None) -> None:
    """Raise :class:`MissingFieldError` for the first sample that is not a dict or lacks (or has None
    for) a field ``fn`` declares, naming it as ``samples[i]``."""
    need = fields_of(fn)
    label = label or reward_label(fn)
    for i, s in enumerate(samples):
        if not isinstance(s, dict):
            raise MissingFieldError(f"samples[{i}] is a {type(s).__name__}, not a dict; reward '{label}' "
                                    f"scores records like {{'answer': ...}}")
        for f in need:
            if s.get(f) is None:
                have = ", ".join(sorted(map(str, s))) or "none"
                raise MissingFieldError(
                    f"samples[{i}] has no field '{f}', which reward '{label}' needs (it reads: "
                    f"{', '.join(need)}; the record has: {have}); add it or map your field name to '{f}'")


def field(sample: dict, name: str, reward: str):
    """``sample[name]`` for a verifier called directly, with the same error as :func:`check_fields`."""
    value = sample.get(name) if isinstance(sample, dict) else None
    if value is None:
        raise MissingFieldError(f"sample has no field '{name}', which reward '{reward}' needs")
    return value


def final_part(completion: str) -> str:
    """What follows the last ``</think>``: the answer part of a reasoning completion (all of it if the
    completion has no such tag). A box or an answer line inside the reasoning is not the answer."""
    head, sep, tail = completion.rpartition("</think>")
    return tail if sep else completion


def as_score(value) -> float:
    """A verifier's return value as a float in [0, 1]; anything else is an error (bools are fine)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"verifier returned {value!r}, not a number in [0, 1]") from None
    if not 0.0 <= out <= 1.0:  # also rejects nan
        raise ValueError(f"verifier returned {out}, outside [0, 1]")
    return out


__all__ = ["REWARDS", "register_reward", "get_reward", "load_builtin_rewards", "reward_names", "check_fields",
           "fields_of", "field", "final_part", "as_score", "MissingFieldError", "Verifier", "reward_label"]
